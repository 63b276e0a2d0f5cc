"""The kind cluster (or an existing one): what is there, what must change, making that change.

One module per job: `kindconfig` (the config kind creates it from), `memlock` (the high-memlock
containerd runtime), `record` (ownership), `nodes` (the node containers docker shows),
`observe` (the read-only picture), `planning` (differences and actions, pure), `lifecycle`
(applying them: ensure, delete), `access` (the kubeconfig the deploy uses) and `runtimeclass`
(the RuntimeClass pods choose the runtime by). This package re-exports what other modules use.
"""

from __future__ import annotations

from laconic_helm.cluster.access import (
    ClusterAccess,
    access_of,
    ensure_kubeconfig,
    kubeconfig_server,
    server_port,
)
from laconic_helm.cluster.kindconfig import kind_config, render_kind_config
from laconic_helm.cluster.lifecycle import (
    ClusterResult,
    apply_cluster,
    converge_cluster,
    delete_cluster,
    ensure_cluster,
)
from laconic_helm.cluster.memlock import (
    MEMLOCK_SPEC_IN_NODE,
    memlock_base_spec,
    memlock_containerd_patch,
)
from laconic_helm.cluster.nodes import (
    API_PORT,
    BindMount,
    Node,
    PortBinding,
    api_binding,
    list_nodes,
    parse_node,
)
from laconic_helm.cluster.observe import ClusterState, observe_cluster, stopped_problem
from laconic_helm.cluster.planning import differences, plan_cluster, plan_delete_cluster
from laconic_helm.cluster.record import (
    Record,
    cluster_dir,
    judge_ownership,
    read_cluster_record,
    read_record,
    record_path,
    write_record,
)
from laconic_helm.cluster.runtimeclass import (
    ensure_runtime_class,
    observe_runtime_class,
    plan_runtime_class,
    runtime_class_manifest,
)

__all__ = [
    "API_PORT",
    "MEMLOCK_SPEC_IN_NODE",
    "BindMount",
    "ClusterAccess",
    "ClusterResult",
    "ClusterState",
    "Node",
    "PortBinding",
    "Record",
    "access_of",
    "api_binding",
    "apply_cluster",
    "cluster_dir",
    "converge_cluster",
    "delete_cluster",
    "differences",
    "ensure_cluster",
    "ensure_kubeconfig",
    "ensure_runtime_class",
    "judge_ownership",
    "kind_config",
    "kubeconfig_server",
    "list_nodes",
    "memlock_base_spec",
    "memlock_containerd_patch",
    "observe_cluster",
    "observe_runtime_class",
    "parse_node",
    "plan_cluster",
    "plan_delete_cluster",
    "plan_runtime_class",
    "read_cluster_record",
    "read_record",
    "record_path",
    "render_kind_config",
    "runtime_class_manifest",
    "server_port",
    "stopped_problem",
    "write_record",
]
