"""importer: a laconic-so deployment dir becomes a spec and values that load, render and keep the
node's data, identity, cluster and Caddy names; whatever has no equivalent is reported."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from laconic_helm import cluster, importer
from laconic_helm.cli import main
from laconic_helm.errors import EXIT_BAD_INPUT, UserError
from laconic_helm.spec import Retire, Spec, data_dir, load_spec
from tests.charts_support import CHARTS, KUBE_VERSION, schema_errors
from tests.harness.laconic_so import CADDY_OBJECTS, stage

CLUSTER = "laconic-70ce4c4b47e23b85"
NAMESPACE = f"laconic-{CLUSTER}"  # laconic-so's app namespace before deployment ids existed
APP = CLUSTER


def set_env(deployment: Path, **values: str) -> None:
    """Sets (or, with an empty value, removes) variables of the staged config.env."""
    path = deployment / "config.env"
    env = importer.parse_env_file(path.read_text(), str(path))
    for key, value in values.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def edit_yaml(path: Path, change: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def run_import(deployment: Path, out: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """The command as an operator runs it, with --output json: (exit code, report, stderr)."""
    result = CliRunner().invoke(
        main,
        ["-o", "json", "import", "laconic-so", "--dir", str(deployment), "--out", str(out), *args],
    )
    return result.exit_code, json.loads(result.stdout), result.stderr


def imported(tmp_path: Path, deployment: Path | None = None) -> tuple[Path, dict[str, Any]]:
    deployment = deployment or stage(tmp_path)
    out = tmp_path / "out"
    code, report, stderr = run_import(deployment, out)
    assert code == 0, stderr
    return out, report


def values(out: Path, name: str = importer.AGAVE_VALUES) -> dict[str, Any]:
    return yaml.safe_load((out / name).read_text())


def findings(report: dict[str, Any], kind: str) -> list[str]:
    return [f"{f['where']}: {f['what']}" for f in report["findings"] if f["kind"] == kind]


# -- the spec --------------------------------------------------------------------------------


@pytest.mark.unit
def test_spec_loads_and_names_laconic_sos_cluster_as_created(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    out, _ = imported(tmp_path, deployment)
    spec = load_spec(out / importer.SPEC_FILE)
    assert spec.cluster.name == CLUSTER
    assert spec.cluster.provider == "kind"
    kind_config = yaml.safe_load((deployment / "kind-config.yml").read_text())
    node = kind_config["nodes"][0]
    created = {
        (p["hostPort"], p.get("protocol", "TCP"), p["containerPort"])
        for p in node["extraPortMappings"]
    }
    assert {(p.host_port, p.protocol, p.container_port) for p in spec.cluster.ports} == created
    assert all(p.listen_address == "0.0.0.0" for p in spec.cluster.ports)
    folders = {
        (m["hostPath"], m["containerPath"], m.get("propagation", "None"))
        for m in node["extraMounts"]
        if not m["hostPath"].endswith(".json")
    }
    assert {
        (str(m.host_path), m.container_path, m.propagation) for m in spec.cluster.mounts
    } == folders
    assert spec.cluster.node_labels == {"ingress-ready": "true"}
    assert spec.cluster.high_memlock


def laconic_so_cluster(deployment: Path) -> cluster.ClusterState:
    """What laconic-helm observes of the node kind made from laconic-so's kind-config.yml."""
    node = yaml.safe_load((deployment / "kind-config.yml").read_text())["nodes"][0]
    api = cluster.PortBinding(cluster.API_PORT, "TCP", "127.0.0.1", 41235)
    ports = tuple(
        cluster.PortBinding(p["containerPort"], p.get("protocol", "TCP"), "0.0.0.0", p["hostPort"])
        for p in node["extraPortMappings"]
    )
    mounts = tuple(
        cluster.BindMount(m["hostPath"], m["containerPath"], False, m.get("propagation", "None"))
        for m in node["extraMounts"]
    )
    created = datetime(2026, 3, 1, tzinfo=UTC)
    control_plane = cluster.Node(
        f"{CLUSTER}-control-plane", "c0ffee", "control-plane", "running", created, created,
        "kindest/node:v1.31.0", (api, *ports), mounts,
    )  # fmt: skip
    return cluster.ClusterState(
        CLUSTER, nodes=(control_plane,), ownership="not created by laconic-helm", api_ready=True,
        node_labels={"ingress-ready": "true", "kubernetes.io/os": "linux"}, memlock_runtime=True,
    )  # fmt: skip


@pytest.mark.unit
def test_the_next_deploy_adopts_the_cluster_as_it_is(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    out, _ = imported(tmp_path, deployment)
    spec = load_spec(out / importer.SPEC_FILE)
    state = laconic_so_cluster(deployment)
    assert cluster.differences(spec.cluster, state) == []
    planned = cluster.plan_cluster(spec.cluster, state, adopt=True)
    assert [a.verb for a in planned] == ["adopt-cluster"]  # never delete-cluster/create-cluster


@pytest.mark.unit
def test_releases_are_caddy_with_laconic_names_then_agave_in_the_app_namespace(
    tmp_path: Path,
) -> None:
    out, _ = imported(tmp_path)
    spec = load_spec(out / importer.SPEC_FILE)
    caddy, agave = spec.releases
    assert (caddy.name, caddy.namespace) == ("caddy-ingress", "caddy-system")
    assert (agave.name, agave.namespace) == ("agave", NAMESPACE)
    assert [p.name for p in caddy.values_files] == [
        "caddy-ingress-kind.yaml",
        "caddy-ingress-laconic-so-adopt.yaml",
        "caddy-ingress.yaml",
    ]
    shipped = data_dir("values") / "caddy-ingress" / "laconic-so-adopt.yaml"
    assert yaml.safe_load(caddy.values_files[1].read_text()) == yaml.safe_load(shipped.read_text())
    raw = yaml.safe_load((out / importer.SPEC_FILE).read_text())
    for release in raw["releases"]:  # relative, so the output folder can move
        assert all(not Path(f).is_absolute() for f in release["valuesFiles"])
    assert spec.images == ("laconicnetwork/agave:local",)
    assert agave.images == spec.images
    # laconic-so put the image straight into the node: streaming keeps its name there.
    assert spec.delivery_mode == "stream"


@pytest.mark.unit
def test_identity_is_a_secret_made_from_the_file_never_its_bytes(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    identity = deployment / "data" / "validator-config" / "validator-identity.json"
    out, report = imported(tmp_path, deployment)
    agave = load_spec(out / importer.SPEC_FILE).releases[1]
    assert [(s.name, s.files) for s in agave.secrets] == [
        ("agave-identity", {"identity.json": identity}),
        ("agave-metrics", {"config": out / importer.METRICS_FILE}),
    ]
    assert values(out)["identity"] == {
        "existingSecret": "agave-identity",
        "secretKey": "identity.json",
    }
    key = identity.read_text()
    numbers = json.loads(key)
    for path in out.iterdir():
        text = path.read_text()
        assert key not in text and ", ".join(map(str, numbers[:8])) not in text, path.name
    assert key not in json.dumps(report)
    # The keypair is mounted 0400; fsGroup lets the image's own user read it, as before.
    assert values(out)["podSecurityContext"] == {"fsGroup": identity.stat().st_gid}


# -- the agave values ------------------------------------------------------------------------


@pytest.mark.unit
def test_agave_config_becomes_chart_values(tmp_path: Path) -> None:
    out, _ = imported(tmp_path)
    v = values(out)
    assert v["mode"] == "rpc"
    assert v["image"] == {
        "repository": "laconicnetwork/agave",
        "tag": "local",
        "pullPolicy": "IfNotPresent",
    }
    assert v["hostNetwork"] is True
    assert v["ports"] == {"rpc": 8899, "gossip": 8001, "dynamicPortRange": "9000-10000"}
    assert v["runtimeClassName"] == "high-memlock"
    assert v["privileged"] is True
    assert v["resources"] == {
        "requests": {"cpu": "4.0", "memory": "256000M"},
        "limits": {"cpu": "32.0", "memory": "1024000M"},
    }
    flags = v["flags"]
    assert flags["entrypoint"] == [
        f"entrypoint{n}.mainnet-beta.solana.com:8001" for n in ("", "2", "3", "4", "5")
    ]
    assert flags["known-validator"][0] == "7Np41oeYqPefeNQEHSv1UDhYrehxin3NStELsSKCT4K2"
    assert len(flags["known-validator"]) == 4
    assert flags["expected-genesis-hash"] == "5eykt4UsFv8P8NJdTREpY1vzqKqZKvdpKuc147dw2N9d"
    assert flags["expected-shred-version"] == 50093
    assert flags["no-snapshots"] is True
    assert "full-snapshot-interval-slots" not in flags
    assert flags["rpc-bind-address"] == "0.0.0.0"
    assert flags["limit-ledger-size"] == 50000000
    # EXTRA_ARGS
    assert flags["enable-accounts-disk-index"] is True
    assert flags["accounts-db-cache-limit-mb"] == 16384
    # rpc mode as the image's entrypoint ran it
    assert flags["log"] == "/data/log/validator.log"
    assert flags["private-rpc"] and flags["only-known-rpc"] and flags["full-rpc-api"]
    assert {"name": "RUST_LOG", "value": "info"} in v["env"]
    # The metrics config holds a password: a Secret from a private file, never a value.
    assert all(e["name"] != "SOLANA_METRICS_CONFIG" for e in v["env"])
    assert v["metrics"] == {"existingSecret": "agave-metrics", "secretKey": "config"}
    config = out / importer.METRICS_FILE
    assert config.read_text() == "host=http://localhost:8086,db=agave_metrics,u=admin,p=admin"
    assert config.stat().st_mode & 0o777 == 0o600
    assert all("p=admin" not in f.read_text() for f in out.iterdir() if f != config)
    release = next(r for r in load_spec(out / importer.SPEC_FILE).releases if r.name == "agave")
    assert {s.name: s.files for s in release.secrets}["agave-metrics"] == {"config": config}


@pytest.mark.unit
def test_data_volumes_are_the_same_host_folders_seen_through_the_node_mounts(
    tmp_path: Path,
) -> None:
    deployment = stage(tmp_path)
    out, _ = imported(tmp_path, deployment)
    spec = load_spec(out / importer.SPEC_FILE)
    laconic = yaml.safe_load((deployment / "spec.yml").read_text())["volumes"]
    mounts = sorted(spec.cluster.mounts, key=lambda m: len(m.container_path), reverse=True)

    def on_host(node_path: str) -> str:
        # The deepest mount wins inside the node, as it is mounted over the umbrella /mnt.
        mount = next(m for m in mounts if f"{node_path}/".startswith(f"{m.container_path}/"))
        return str(mount.host_path) + node_path[len(mount.container_path) :]

    chart = values(out)["volumes"]
    for name in ("config", "ledger", "accounts", "snapshots", "log"):
        assert chart[name]["type"] == "hostPath"
        assert on_host(chart[name]["hostPath"]) == laconic[f"validator-{name}"], name


@pytest.mark.unit
def test_rpc_and_websocket_routes_become_separate_ingress_routes(tmp_path: Path) -> None:
    out, report = imported(tmp_path)
    ingress = values(out)["ingress"]
    assert ingress["rpc"] == {"hosts": ["biscayne.example.org"], "path": "/"}
    # laconic-so gave both the same "/" (the WebSocket never got through); now it has /ws.
    assert ingress["ws"] == {"hosts": [], "path": "/ws"}
    assert any("wss://biscayne.example.org/ws" in f for f in findings(report, "changed"))
    assert any("monitoring-grafana:3000" in f for f in findings(report, "unmapped"))


@pytest.mark.unit
def test_websocket_on_its_own_host_keeps_that_host(tmp_path: Path) -> None:
    deployment = stage(tmp_path)

    def own_host(doc: dict[str, Any]) -> None:
        doc["network"]["http-proxy"][0]["routes"].pop()
        doc["network"]["http-proxy"].append(
            {"host-name": "WS.biscayne.example.org", "routes": [
                {"path": "/", "proxy-to": "agave-validator:8900"}]}
        )  # fmt: skip

    edit_yaml(deployment / "spec.yml", own_host)
    out, _ = imported(tmp_path, deployment)
    assert values(out)["ingress"]["ws"] == {"hosts": ["ws.biscayne.example.org"], "path": "/"}


@pytest.mark.unit
def test_caddy_values_keep_acme_email_and_the_certificate_backup(tmp_path: Path) -> None:
    out, report = imported(tmp_path)
    assert values(out, importer.CADDY_VALUES) == {
        "acme": {"email": "ops@biscayne.example.org"},
        "certBackup": {"enabled": True, "hostPath": "/mnt/caddy-cert-backup"},
    }
    assert any("caddy-ingress-image" in f for f in findings(report, "changed"))


@pytest.mark.unit
def test_a_pinned_caddy_image_is_kept(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    edit_yaml(
        deployment / "spec.yml",
        lambda d: d.update(
            {"caddy-ingress-image": f"{importer.LACONIC_CADDY_REPOSITORY}:v0.2.1-acme"}
        ),
    )
    out, _ = imported(tmp_path, deployment)
    assert values(out, importer.CADDY_VALUES)["image"] == {
        "variant": "laconic",
        "repository": importer.LACONIC_CADDY_REPOSITORY,
        "tag": "v0.2.1-acme",
    }


@pytest.mark.unit
def test_a_too_narrow_dynamic_port_range_is_widened_and_reported(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    set_env(deployment, DYNAMIC_PORT_RANGE="8002-8020")
    out, report = imported(tmp_path, deployment)
    assert values(out)["ports"]["dynamicPortRange"] == "8002-8028"
    assert any("DYNAMIC_PORT_RANGE" in f for f in findings(report, "changed"))


@pytest.mark.unit
def test_validator_mode_maps_the_vote_account_keypair(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    vote = deployment / "data" / "validator-config" / "vote-account-keypair.json"
    vote.write_text(json.dumps(list(os.urandom(64))))
    set_env(deployment, AGAVE_MODE="validator", JITO_ENABLE="true", JITO_RELAYER_URL="http://r:1")
    out, report = imported(tmp_path, deployment)
    v = values(out)
    assert v["mode"] == "validator"
    assert v["vote"] == {"existingSecret": "agave-vote", "secretKey": "vote-account.json"}
    secrets = {s.name: s.files for s in load_spec(out / importer.SPEC_FILE).releases[1].secrets}
    assert secrets["agave-vote"] == {"vote-account.json": vote}
    assert "log" not in v["flags"] and "private-rpc" not in v["flags"]
    assert v["flags"]["relayer-url"] == "http://r:1"
    assert vote.read_text() not in "".join(p.read_text() for p in out.iterdir())
    assert any("Jito" in f for f in findings(report, "changed"))


@pytest.mark.unit
def test_namespace_follows_laconic_so_naming_and_can_be_overridden(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    _, report = imported(tmp_path, deployment)
    assert report["appNamespace"] == NAMESPACE
    assert any(NAMESPACE in f for f in findings(report, "assumed"))

    (deployment / "deployment.yml").write_text(
        f"cluster-id: {CLUSTER}\ndeployment-id: laconic-3k7m2ab\n"
    )
    code, report, _ = run_import(deployment, tmp_path / "new", "--force")
    assert code == 0
    assert report["appNamespace"] == "laconic-agave"  # newer laconic-so: named after the stack
    assert report["takeover"]["appSelector"] == "app=laconic-3k7m2ab"
    assert report["cluster"] == CLUSTER

    code, report, _ = run_import(deployment, tmp_path / "given", "--namespace", "laconic-x")
    assert code == 0
    assert report["appNamespace"] == "laconic-x"
    assert not findings(report, "assumed")


# -- the report ------------------------------------------------------------------------------


@pytest.mark.unit
def test_report_lists_what_has_no_equivalent_in_the_file_and_the_output(tmp_path: Path) -> None:
    out, report = imported(tmp_path)
    unmapped = findings(report, "unmapped")
    expected = [
        "config.env: SNAPSHOT_AUTO_DOWNLOAD",
        "compose/docker-compose-doublezero.yml: services.doublezerod",
        "compose/docker-compose-monitoring.yml: services.monitoring-grafana",
        "spec.yml: network.http-proxy[1].routes[0]",
    ]
    for where in expected:
        assert any(f.startswith(where) for f in unmapped), where
    ignored = findings(report, "ignored")
    assert any(
        f.startswith("compose/docker-compose-agave.yml: services.agave-validator.ulimits")
        for f in ignored
    )
    assert any(f.startswith("config.env: NODE_NAME") for f in ignored)
    on_disk = yaml.safe_load((out / importer.REPORT_FILE).read_text())
    assert on_disk["findings"] == report["findings"]
    assert on_disk["next"] == report["next"]


@pytest.mark.unit
def test_unknown_keys_anywhere_are_reported_not_dropped(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    edit_yaml(deployment / "spec.yml", lambda d: d.update({"maintenance-service": "agave-maint"}))
    edit_yaml(
        deployment / "compose" / "docker-compose-agave.yml",
        lambda d: d["services"]["agave-validator"].update({"mem_swappiness": 0}),
    )
    edit_yaml(
        deployment / "kind-config.yml", lambda d: d.update({"networking": {"ipFamily": "ipv4"}})
    )
    set_env(deployment, MY_FEATURE_FLAG="1")
    _, report = imported(tmp_path, deployment)
    unmapped = findings(report, "unmapped")
    for where in (
        "spec.yml: maintenance-service",
        "compose/docker-compose-agave.yml: services.agave-validator.mem_swappiness",
        "kind-config.yml: networking",
        "config.env: MY_FEATURE_FLAG",
    ):
        assert any(f.startswith(where) for f in unmapped), where


@pytest.mark.unit
def test_takeover_names_the_laconic_so_objects_to_adopt_remove_and_keep(tmp_path: Path) -> None:
    _, report = imported(tmp_path)
    t = report["takeover"]
    assert t["appNamespace"] == NAMESPACE and t["appSelector"] == f"app={APP}"
    assert {(o["kind"], o["name"]) for o in t["adoptIntoCaddyRelease"]} == CADDY_OBJECTS
    removed = {(o["kind"], o["name"]) for o in t["removeAfterAgaveDeployment"]}
    assert ("Deployment", f"{APP}-agave-deployment") in removed
    assert ("Ingress", f"{APP}-ingress") in removed
    assert ("Service", f"{APP}-nodeport-9025-udp") in removed
    assert not any(
        o["kind"] in ("PersistentVolume", "PersistentVolumeClaim")
        for o in t["removeAfterAgaveDeployment"]
    )
    kept = {(o["kind"], o["name"]) for o in t["keep"]}
    assert ("PersistentVolume", f"{APP}-validator-ledger") in kept
    assert ("PersistentVolumeClaim", f"{APP}-validator-ledger") in kept
    assert {o["name"] for o in t["leaveRunning"]} == {
        f"{APP}-doublezero-deployment",
        f"{APP}-monitoring-deployment",
    }


@pytest.mark.unit
def test_the_spec_retires_the_takeovers_removals_and_never_data(tmp_path: Path) -> None:
    out, report = imported(tmp_path)
    t = report["takeover"]
    caddy, agave = load_spec(out / importer.SPEC_FILE).releases
    assert agave.retire is not None and caddy.retire is not None
    assert agave.retire.selector == t["appSelector"] == f"app={APP}"
    assert agave.retire.grace_period_seconds == importer.OLD_NODE_GRACE

    def listed(retire: Retire) -> list[tuple[str, str, str | None]]:
        return [(o.kind, o.name, o.namespace) for o in retire.objects]

    def named(objects: list[dict[str, str]]) -> list[tuple[str, str, str | None]]:
        return [(o["kind"], o["name"], o.get("namespace")) for o in objects]

    assert listed(agave.retire) == named(t["removeAfterAgaveDeployment"])
    assert listed(caddy.retire) == named(t["removeAfterCaddyRelease"])
    assert caddy.retire.labels == {
        "app.kubernetes.io/name": "caddy-cert-backup",
        "app.kubernetes.io/instance": "caddy-ingress",
    }
    kept = {(o["kind"], o["name"]) for o in t["keep"]}
    assert not kept & {(o.kind, o.name) for o in (*agave.retire.objects, *caddy.retire.objects)}


@pytest.mark.unit
def test_laconic_sos_ingress_stays_when_the_node_has_no_routes(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    edit_yaml(
        deployment / "spec.yml",
        lambda d: d["network"].update({"http-proxy": d["network"]["http-proxy"][1:]}),
    )
    out, _ = imported(tmp_path, deployment)
    agave = load_spec(out / importer.SPEC_FILE).releases[1]
    assert agave.retire is not None
    assert "Ingress" not in {o.kind for o in agave.retire.objects}
    assert ("Deployment", f"{APP}-agave-deployment") in {
        (o.kind, o.name) for o in agave.retire.objects
    }


@pytest.mark.unit
def test_a_single_pod_stack_uses_laconic_sos_single_pod_names(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    for pod in ("doublezero", "monitoring"):
        (deployment / "compose" / f"docker-compose-{pod}.yml").unlink()
    (deployment / "config.env").unlink()  # then spec.yml's config is the environment
    out, report = imported(tmp_path, deployment)
    t = report["takeover"]
    removed = {(o["kind"], o["name"]) for o in t["removeAfterAgaveDeployment"]}
    assert {("Deployment", f"{APP}-deployment"), ("Service", f"{APP}-service")} <= removed
    assert t["leaveRunning"] == []
    assert values(out)["flags"]["expected-shred-version"] == 50093
    assert any(
        f.startswith("spec.yml: config.SNAPSHOT_AUTO_DOWNLOAD")
        for f in findings(report, "unmapped")
    )


@pytest.mark.unit
def test_a_volume_without_host_path_keeps_laconic_sos_claim(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    edit_yaml(deployment / "spec.yml", lambda d: d["volumes"].update({"validator-snapshots": None}))
    out, report = imported(tmp_path, deployment)
    claim = f"{APP}-validator-snapshots"
    assert values(out)["volumes"]["snapshots"] == {"type": "existingClaim", "existingClaim": claim}
    kept = {(o["kind"], o["name"]) for o in report["takeover"]["keep"]}
    assert ("PersistentVolumeClaim", claim) in kept
    assert ("PersistentVolume", claim) not in kept


@pytest.mark.unit
def test_only_a_test_node_makes_the_deploy_wait_for_readiness(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    out, _ = imported(tmp_path, deployment)
    assert load_spec(out / importer.SPEC_FILE).releases[1].wait is False
    set_env(deployment, AGAVE_MODE="test")
    code, _, _ = run_import(deployment, out, "--force")
    assert code == 0
    spec = load_spec(out / importer.SPEC_FILE)
    assert spec.releases[1].wait is True
    # No keypair in test mode; the metrics config stays a Secret in every mode.
    assert [s.name for s in spec.releases[1].secrets] == ["agave-metrics"]


@pytest.mark.unit
def test_output_tells_the_next_commands_with_adopt_cluster(tmp_path: Path) -> None:
    out, report = imported(tmp_path)
    spec = out / importer.SPEC_FILE
    assert report["next"] == [
        f"laconic-helm plan --spec {spec} --adopt-cluster",
        f"laconic-helm deploy --spec {spec} --adopt-cluster",
    ]
    assert f"--spec {spec} --adopt-cluster" in spec.read_text()
    assert report["ok"] is True and report["changed"] is True


# -- refusals --------------------------------------------------------------------------------


def _refused(tmp_path: Path, deployment: Path) -> str:
    out = tmp_path / "out"
    code, report, _ = run_import(deployment, out)
    assert code == EXIT_BAD_INPUT
    assert not out.exists()
    assert not list(tmp_path.glob(".out.import-*"))
    error = report["error"]
    assert "\n" not in error
    return error


@pytest.mark.unit
def test_missing_dir_is_refused(tmp_path: Path) -> None:
    assert "no such deployment dir" in _refused(tmp_path, tmp_path / "nowhere")


@pytest.mark.unit
def test_missing_spec_is_refused_naming_the_file(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    (deployment / "spec.yml").unlink()
    assert f"{deployment}/spec.yml: does not exist" in _refused(tmp_path, deployment)


@pytest.mark.unit
def test_malformed_yaml_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    (deployment / "kind-config.yml").write_text("nodes:\n  - role: [control-plane\n")
    assert f"{deployment}/kind-config.yml: line 3: not valid YAML" in _refused(tmp_path, deployment)


@pytest.mark.unit
def test_a_deployment_not_on_kind_is_refused(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    edit_yaml(deployment / "spec.yml", lambda d: d.update({"deploy-to": "k8s"}))
    error = _refused(tmp_path, deployment)
    assert f"{deployment}/spec.yml: deploy-to: 'k8s' is not supported" in error


@pytest.mark.unit
def test_an_import_off_the_nodes_host_notes_the_missing_keypair_and_deploy_refuses(
    tmp_path: Path,
) -> None:
    deployment = stage(tmp_path)
    identity = deployment / "data" / "validator-config" / "validator-identity.json"
    identity.unlink()
    out, report = imported(tmp_path, deployment)
    (finding,) = [f for f in report["findings"] if f["where"] == str(identity)]
    assert finding["kind"] == "assumed" and "is not on this host" in finding["what"]
    spec = yaml.safe_load((out / "deployment.yaml").read_text())
    agave = next(r for r in spec["releases"] if r["name"] == "agave")
    assert agave["secrets"][0]["files"]["identity.json"] == str(identity)
    assert "fsGroup" not in values(out).get("podSecurityContext", {})  # no file, no group
    # The spec check of plan and deploy refuses until the keypair is on the host.
    result = CliRunner().invoke(
        main, ["plan", "-o", "json", "--spec", str(out / "deployment.yaml")]
    )
    assert result.exit_code == EXIT_BAD_INPUT
    error = json.loads(result.stdout)["error"]
    assert str(identity) in error and "does not exist" in error


@pytest.mark.unit
def test_a_bad_config_env_line_is_refused_naming_the_line(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    with (deployment / "config.env").open("a") as f:
        f.write("not a variable\n")
    assert f"{deployment}/config.env: line 17: expected KEY=value" in _refused(tmp_path, deployment)


@pytest.mark.unit
def test_an_earlier_import_is_kept_unless_forced(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    out, _ = imported(tmp_path, deployment)
    before = {p.name: p.read_text() for p in out.iterdir()}

    code, report, _ = run_import(deployment, out)  # same input: nothing to do
    assert code == 0 and report["changed"] is False

    set_env(deployment, RUST_LOG="debug")
    code, report, _ = run_import(deployment, out)
    assert code == EXIT_BAD_INPUT
    assert "--force" in report["error"]
    assert {p.name: p.read_text() for p in out.iterdir()} == before

    code, report, _ = run_import(deployment, out, "--force")
    assert code == 0 and report["changed"] is True
    assert {"name": "RUST_LOG", "value": "debug"} in values(out)["env"]


@pytest.mark.unit
def test_import_reads_only(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    before = {p: p.read_bytes() for p in deployment.rglob("*") if p.is_file()}
    imported(tmp_path, deployment)
    assert {p: p.read_bytes() for p in deployment.rglob("*") if p.is_file()} == before


@pytest.mark.unit
def test_environment_expansion_follows_laconic_so() -> None:
    service = importer.Service(
        "s",
        "p",
        "compose/x.yml",
        {"environment": {"A": "${A:-one}", "B": "${B-two}", "C": "${C}", "D": "x${A}", "E": ""}},
    )
    assert importer.service_env(service, {"B": "", "F": "f"}) == {
        "A": "one",
        "D": "x${A}",
        "F": "f",
    }


@pytest.mark.unit
def test_build_import_writes_nothing(tmp_path: Path) -> None:
    deployment = stage(tmp_path)
    result = importer.build_import(deployment, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert set(result.files) >= {importer.SPEC_FILE, importer.AGAVE_VALUES, importer.REPORT_FILE}
    with pytest.raises(UserError):
        importer.build_import(tmp_path / "nowhere", tmp_path / "out")


# -- rendering with the charts ----------------------------------------------------------------


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _render(helm: str, spec: Spec, index: int) -> list[dict[str, Any]]:
    release = spec.releases[index]
    args = [a for f in release.values_files for a in ("--values", str(f))]
    done = subprocess.run(
        [helm, "template", release.name, release.chart, "--namespace", release.namespace,
         "--kube-version", KUBE_VERSION, *args],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _variant(tmp_path: Path, name: str) -> Path:
    deployment = stage(tmp_path)
    if name == "validator":
        keys = deployment / "data" / "validator-config"
        (keys / "vote-account-keypair.json").write_text(json.dumps(list(os.urandom(64))))
        set_env(deployment, AGAVE_MODE="validator", NO_SNAPSHOTS="", DYNAMIC_PORT_RANGE="8002-8020")
    elif name == "test":
        set_env(deployment, AGAVE_MODE="test")
    elif name == "scheduling":
        scheduling = {
            "labels": {"example.org/{name}": "agave"},
            "annotations": {"example.org/owner": "ops"},
            "node-affinities": [{"label": "nodetype", "value": "c"}],
            "node-tolerations": [{"key": "nodeavoid", "value": "c"}],
        }
        edit_yaml(deployment / "spec.yml", lambda d: d.update(scheduling))
    return deployment


@pytest.mark.helm
@pytest.mark.parametrize("variant", ["biscayne-rpc", "validator", "test", "scheduling"])
def test_imported_values_pass_the_schemas_and_render(
    helm_bin: str, tmp_path: Path, variant: str
) -> None:
    out, _ = imported(tmp_path, _variant(tmp_path, variant))
    spec = load_spec(out / importer.SPEC_FILE)
    for index, release in enumerate(spec.releases):
        chart = Path(release.chart)
        assert chart.parent == CHARTS or chart.parent.name == "charts"
        merged = yaml.safe_load((chart / "values.yaml").read_text())
        for f in release.values_files:
            merged = _deep_merge(merged, yaml.safe_load(f.read_text()) or {})
        schema = json.loads((chart / "values.schema.json").read_text())
        jsonschema.validate(merged, schema)
        docs = _render(helm_bin, spec, index)
        assert schema_errors(docs) == []
        if release.name == "caddy-ingress":
            rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
            assert rendered >= CADDY_OBJECTS
        else:
            deployment = next(d for d in docs if d["kind"] == "Deployment")
            pod = deployment["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes["ledger"]["hostPath"]["path"] == "/mnt/solana/ledger"
            assert pod["runtimeClassName"] == "high-memlock"
            assert pod["hostNetwork"] is True
            if variant == "scheduling":
                labels = deployment["spec"]["template"]["metadata"]["labels"]
                assert labels["example.org/agave-validator"] == "agave"
                assert pod["tolerations"][0]["key"] == "nodeavoid"
                assert "nodeAffinity" in pod["affinity"]
            if variant != "test":
                args = pod["containers"][0]["args"]
                assert args[args.index("--identity") + 1] == "/keys/identity/identity.json"
                assert "entrypoint.mainnet-beta.solana.com:8001" in args
