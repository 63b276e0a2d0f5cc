"""The one vocabulary of change: every step observes, then plans `Action`s, then acts.

`plan`, the step lines, logs and the JSON report all speak in these actions, so what the
operator is shown is exactly what will be (or was) done. Planning is pure; acting re-checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Every verb a step plans, what it does, and which step plans it. `plan` lists the same
# actions `deploy` then reports taking; the verbs in NO_CHANGE are reported but change nothing.
VERBS: dict[str, str] = {
    # cluster
    "create-cluster": "kind create cluster, its config and ownership record written first",
    "delete-cluster": "kind delete cluster (ours only: rebuild, or `down --delete-cluster`)",
    "start-node": "docker start a stopped node container of our cluster",
    "adopt-cluster": "record a same-named cluster as ours (--adopt-cluster)",
    "create-runtime-class": "create the high-memlock RuntimeClass",
    # images
    "retag-image": "tag an image a node holds under another name with the wanted name",
    "load-image": "stream the layers a node lacks into its containerd",
    "create-registry": "run the local registry container (on its volume, which is kept)",
    "start-registry": "docker start the stopped local registry container",
    "connect-registry": "connect the local registry container to the nodes' network",
    "configure-node": "write a node's containerd host config for the local registry",
    "push-image": "docker push an image to the registry (only the layers it lacks)",
    "pull-image": "pull an image from the registry into a node (only the layers it lacks)",
    # release/<name>
    "unlock-release": "mark a stale pending-* revision failed, so the upgrade can go on",
    "uninstall-release": "finish an interrupted uninstall before installing again",
    "create-namespace": "create the release's namespace",
    "apply-secret": "create or update a Secret the release needs (keypairs, metrics)",
    "adopt-object": "stamp Helm's ownership on an unowned object the chart renders",
    "wait-restart-window": "wait for a serving node's restart window before restarting it",
    "upgrade-release": "helm upgrade --install with the release's chart and values",
    "up-to-date": "nothing: the newest revision is deployed with the desired digest",
    "retire-object": "remove an object the release replaces (its `retire` section)",
    "keep-object": "nothing: a `retire` object that is not the previous installer's stays",
}
NO_CHANGE = frozenset({"up-to-date", "keep-object"})


@dataclass(frozen=True)
class Action:
    """One change to the world, named so a person can read it and a test can target it.

    `step` groups actions (cluster, images, release/<name>); `verb` is one of VERBS; `target`
    names the object; `detail` says why or how.
    """

    step: str
    verb: str
    target: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.verb not in VERBS:
            raise ValueError(f"unknown action verb {self.verb!r}")

    @property
    def changes(self) -> bool:
        return self.verb not in NO_CHANGE

    def line(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.step}: {self.verb} {self.target}{detail}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
