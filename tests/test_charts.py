"""What every chart of this repository must do, whichever it is: lint clean, render valid and
pinned objects the same with Helm 3 and 4, pull its image by digest when given one, be accepted
by a real API server, keep the claims it creates, refuse unknown or mistyped values by name, and
put podAnnotations on its pod. Written once over both charts; each chart's own rules are in
test_chart_<chart>*.py."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from tests.charts_support import (
    CHART_NAMES,
    Scenario,
    all_scenarios,
    chart_scenarios,
    containers,
    ensure_runtime_class,
    helm4,
    image_tag,
    install,
    lint,
    of_kind,
    pod_annotations,
    pod_spec,
    pods_admitted,
    render,
    render_error,
    schema_errors,
    uninstall,
)

if TYPE_CHECKING:
    from tests.harness.api import KubeAPI

# Each chart's defaults and ci scenarios (what ct lints), and those with its overlays.
LINTED = [s for chart in CHART_NAMES for s in chart_scenarios(chart)]
SCENARIOS = [s for chart in CHART_NAMES for s in all_scenarios(chart)]
# A top-level key each chart does not have, and a value of the wrong type with the names an
# error may give its key by (Helm 3 and Helm 4 word schema errors differently).
TYPO = {"agave": "mdoe=rpc", "caddy-ingress": "replicaCout=1"}
WRONG_TYPE = {
    "agave": ("hostNetwork=yes-please", ("hostNetwork",)),
    "caddy-ingress": ("service.type=Ingress", ("service.type", "/service/type")),
}
# The container each chart runs its `image` in, and a well-formed digest to pin it by.
MAIN_CONTAINER = {"agave": "agave", "caddy-ingress": "controller"}
DIGEST = "sha256:" + "0123456789abcdef" * 4

pytestmark = pytest.mark.helm


def by_id(scenario: Scenario) -> str:
    return scenario.id


@pytest.mark.parametrize("scenario", LINTED, ids=by_id)
def test_lint_strict_passes(helm_bin: str, scenario: Scenario) -> None:
    done = lint(helm_bin, scenario)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("scenario", SCENARIOS, ids=by_id)
def test_rendered_objects_are_valid_kubernetes(helm_bin: str, scenario: Scenario) -> None:
    assert schema_errors(render(helm_bin, scenario)) == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=by_id)
def test_helm_3_and_4_render_the_same_objects(scenario: Scenario) -> None:
    helm3 = shutil.which("helm3")
    assert helm3
    assert render(helm4(), scenario) == render(helm3, scenario)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=by_id)
def test_api_server_accepts_the_release(
    kube_api: KubeAPI, namespace: str, scenario: Scenario
) -> None:
    # Helm 4 applies server-side with strict field validation (Helm 3 sends the same objects,
    # see above); the pods the ReplicaSet makes must then pass pod admission too.
    ensure_runtime_class(kube_api)
    done = install(helm4(), scenario, kube_api, namespace)
    try:
        assert done.returncode == 0, done.stderr
        assert pods_admitted(kube_api, namespace) == []
    finally:
        uninstall(helm4(), kube_api, namespace)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=by_id)
def test_every_image_is_pinned(helm_bin: str, scenario: Scenario) -> None:
    for container in containers(render(helm_bin, scenario)):
        assert image_tag(container["image"]) not in ("", "latest"), container["image"]


def main_image(helm: str, chart: str, *sets: str) -> str:
    """The image of the container the chart's `image` values configure."""
    spec = pod_spec(render(helm, Scenario(chart, ()), *sets))
    return next(c["image"] for c in spec["containers"] if c["name"] == MAIN_CONTAINER[chart])


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_image_digest_pins_the_image_by_content(helm_bin: str, chart: str) -> None:
    """In registry mode the driver pins each image by digest: the pod must pull exactly that
    content whatever the tag says; without a digest the pinned tag stays in force."""
    tagged = main_image(helm_bin, chart)
    repository, tag = tagged.rsplit(":", 1)
    assert tag not in ("", "latest") and "@" not in tagged, tagged
    assert main_image(helm_bin, chart, f"image.digest={DIGEST}") == f"{repository}@{DIGEST}"
    # The tag names nothing pulled once a digest is given, so a floating one is no longer refused.
    pinned = main_image(helm_bin, chart, f"image.digest={DIGEST}", "image.tag=latest")
    assert pinned == f"{repository}@{DIGEST}"
    assert 'image.tag must be a pinned tag, not "latest"' in render_error(
        helm_bin, Scenario(chart, ()), "image.tag=latest"
    )


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:abc",
        "sha256:" + "0123456789ABCDEF" * 4,
        "sha512:" + "0123456789abcdef" * 4,
        "0123456789abcdef" * 4,
        DIGEST + "0",
    ],
)
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_malformed_image_digest_is_refused_by_name(helm_bin: str, chart: str, digest: str) -> None:
    error = render_error(helm_bin, Scenario(chart, ()), f"image.digest={digest}")
    assert "image.digest" in error or "/image/digest" in error, error


@pytest.mark.parametrize("scenario", SCENARIOS, ids=by_id)
def test_created_claims_survive_uninstall(helm_bin: str, scenario: Scenario) -> None:
    for claim in of_kind(render(helm_bin, scenario), "PersistentVolumeClaim"):
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_typo_in_a_top_level_key_is_refused_by_name(helm_bin: str, chart: str) -> None:
    pair = TYPO[chart]
    assert pair.split("=")[0] in render_error(helm_bin, Scenario(chart, ()), pair)


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_wrong_type_is_refused_by_name(helm_bin: str, chart: str) -> None:
    pair, names = WRONG_TYPE[chart]
    error = render_error(helm_bin, Scenario(chart, ()), pair)
    assert any(name in error for name in names), error


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_pod_annotations_reach_the_pod(helm_bin: str, chart: str) -> None:
    """Operators (and the driver's content digest) roll the pod through podAnnotations."""
    annotated = [s for s in all_scenarios(chart) if s.values().get("podAnnotations")]
    assert annotated, f"no scenario of {chart} sets podAnnotations"
    for scenario in annotated:
        given = scenario.values()["podAnnotations"]
        assert pod_annotations(render(helm_bin, scenario)).items() >= given.items()
