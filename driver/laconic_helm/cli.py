"""The `laconic-helm` command line: parse, call the domain function, render. No logic here."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from laconic_helm import __version__
from laconic_helm.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    LaconicHelmError,
    UserError,
)
from laconic_helm.output import OutputMode, Reporter

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine


@dataclass
class App:
    reporter: Reporter
    verbose: int


def _finish(
    app: App, *, ok: bool, exit_code: int, error: str | None = None, **extra: Any
) -> NoReturn:
    app.reporter.report(ok=ok, exit_code=exit_code, error=error, **extra)
    sys.exit(exit_code)


def _run(app: App, work: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> NoReturn:
    """Runs a command body; maps the error hierarchy to one line and an exit code."""
    from laconic_helm import interrupt

    try:
        result = interrupt.run(work())
    except LaconicHelmError as exc:
        if app.verbose:
            logging.getLogger("laconic_helm").exception("failed")
        message = exc.message + (f" ({exc.hint})" if exc.hint else "")
        _finish(app, ok=False, exit_code=exc.exit_code, error=message)
    ok = bool(result.pop("ok", True))
    _finish(
        app, ok=ok, exit_code=int(result.pop("exit_code", EXIT_OK if ok else EXIT_FAILED)), **result
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="laconic-helm")
@click.option(
    "--output",
    "-o",
    type=click.Choice(["human", "json"]),
    default="human",
    envvar="LACONIC_HELM_OUTPUT",
    show_default=True,
    help="human: step lines on stderr; json: one JSON object on stdout (env LACONIC_HELM_OUTPUT).",
)
@click.option("-v", "--verbose", count=True, help="Log commands and debug detail to stderr.")
@click.pass_context
def main(ctx: click.Context, output: OutputMode, verbose: int) -> None:
    """Deploys an Agave node behind Caddy on kind with Helm; every re-run converges."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = App(Reporter(output), verbose)


def _set_output(ctx: click.Context, _: click.Parameter, value: OutputMode | None) -> None:
    if value is not None:
        ctx.find_object(App).reporter = Reporter(value)


def _output_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`-o/--output` after the subcommand too (`laconic-helm deploy -o json`), as before it."""
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["human", "json"]),
        default=None,
        expose_value=False,
        callback=_set_output,
        help="As `laconic-helm --output`: human lines, or one JSON object on stdout.",
    )(command)


@main.command()
@_output_option
@click.pass_obj
def doctor(app: App) -> None:
    """Checks the external tools the driver needs; exits 2 when a required one is missing."""
    from laconic_helm import tools

    async def work() -> dict[str, Any]:
        statuses = await tools.doctor()
        for status in statuses:
            app.reporter.line(status.line())
        missing = [s.name for s in statuses if s.required and not s.ok]
        return {
            "ok": not missing,
            "exit_code": EXIT_BAD_INPUT if missing else EXIT_OK,
            "error": f"missing or unusable: {', '.join(missing)}" if missing else None,
            "tools": [vars(s) for s in statuses],
        }

    _run(app, work)


@main.command()
@_output_option
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="File to write. Default: ./deployment.yaml, the spec the other commands read.",
)
@click.pass_obj
def init(app: App, out: Path | None) -> None:
    """Writes the default deployment spec, every field commented, to edit; never overwrites."""
    from laconic_helm import spec

    async def work() -> dict[str, Any]:
        with app.reporter.step("write the default spec") as rec:
            written = spec.write_example(out)
            rec.done("changed", str(written))
        return {"spec": str(written.resolve())}

    _run(app, work)


@main.group()
def images() -> None:
    """Moves local Docker images into a kind cluster's nodes."""


def _lock_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--lock-wait",
        type=click.FloatRange(min=0),
        default=60.0,
        show_default=True,
        help="Seconds to wait while another run holds this deployment's lock (then exit 4).",
    )(command)


@images.command("load")
@_output_option
@click.option("--cluster", required=True, help="kind cluster name (its nodes are found by label).")
@_lock_option
@click.option(
    "--via",
    type=click.Choice(["stream", "registry"]),
    default="stream",
    show_default=True,
    help="stream: into each node's containerd; registry: pushed to the cluster's local "
    "registry (<cluster>-registry on 127.0.0.1:--registry-port), then pulled by each node.",
)
@click.option(
    "--registry-port", type=click.IntRange(1, 65535), default=5001, show_default=True,
    help="Host port of the local registry (--via registry).",
)  # fmt: skip
@click.option(
    "--registry-image", default="registry:2", show_default=True,
    help="Image of the local registry container (--via registry).",
)  # fmt: skip
@click.argument("image", nargs=-1, required=True)
@click.pass_obj
def images_load(
    app: App,
    cluster: str,
    lock_wait: float,
    via: str,
    registry_port: int,
    registry_image: str,
    image: tuple[str, ...],
) -> None:
    """Loads IMAGEs into every node of the cluster, sending only what a node lacks.

    It takes the cluster's deployment lock, so it never runs beside a deploy or another load
    (a load in progress protects its half-sent layers from containerd's garbage collector)."""
    from laconic_helm.loading import load_images, load_images_via_registry

    async def work() -> dict[str, Any]:
        if via == "registry":
            return await load_images_via_registry(
                cluster, image, app.reporter, port=registry_port, image=registry_image,
                lock_wait=lock_wait,
            )  # fmt: skip
        return await load_images(cluster, image, app.reporter, lock_wait=lock_wait)

    _run(app, work)


def _spec_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--spec",
        "spec_file",
        type=click.Path(path_type=Path, dir_okay=True),
        default=None,
        envvar="LACONIC_HELM_SPEC",
        help="Deployment spec (env LACONIC_HELM_SPEC). Default: ./deployment.yaml if present, "
        "else the built-in default (Caddy + agave test node on kind cluster laconic-local).",
    )(command)


def _flag(*names: str, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An on/off option, off unless given."""
    return click.option(*names, is_flag=True, help=help)


def _cluster_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = _flag(
        "--recreate-cluster",
        help="Rebuild the kind cluster when its ports or mounts differ (only one this tool made).",
    )(command)
    return _flag(
        "--adopt-cluster",
        help="Treat a same-named kind cluster that this tool did not create as its own.",
    )(command)


def _strict_host_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return _flag(
        "--strict-host",
        help="Refuse (exit 2) a host short of the sysctls and memlock an agave rpc or validator "
        "node needs, or on cgroup v1 for a kubelet that refuses it; else only a warning.",
    )(command)


def _restart_window_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--no-restart-window",
        "restart_window",
        flag_value=False,
        default=True,
        help="Restart a serving rpc or validator node at once, without waiting for its "
        "restart window (its release's restartWindow values).",
    )(command)


def _load(spec_file: Path | None) -> Any:
    from laconic_helm import spec

    if spec_file is None and Path(spec.DEFAULT_SPEC_NAME).is_file():
        spec_file = Path(spec.DEFAULT_SPEC_NAME)
    return spec.load_spec(spec_file)


@main.command()
@_output_option
@_spec_option
@click.option(
    "--deadline",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds the run may take; it stops cleanly before then and exits 3 (re-run to go on).",
)
@_lock_option
@_cluster_options
@_strict_host_option
@_restart_window_option
@_flag(
    "--dry-run",
    help="List what would be adopted, created, changed or removed (as `plan`); write nothing.",
)
@click.pass_obj
def deploy(
    app: App,
    spec_file: Path | None,
    deadline: float | None,
    lock_wait: float,
    recreate_cluster: bool,
    adopt_cluster: bool,
    strict_host: bool,
    restart_window: bool,
    dry_run: bool,
) -> None:
    """Brings cluster, images and releases to the spec, redoing nothing already done."""
    from laconic_helm import commands

    opts = commands.Options(
        deadline, lock_wait, recreate_cluster, adopt_cluster, strict_host, restart_window
    )
    run = commands.plan if dry_run else commands.deploy

    async def work() -> dict[str, Any]:
        return await run(_load(spec_file), app.reporter, opts)

    _run(app, work)


@main.command()
@_output_option
@_spec_option
@_cluster_options
@_strict_host_option
@_restart_window_option
@click.pass_obj
def plan(
    app: App,
    spec_file: Path | None,
    recreate_cluster: bool,
    adopt_cluster: bool,
    strict_host: bool,
    restart_window: bool,
) -> None:
    """Shows what `deploy` would do against the live state; writes nothing."""
    from laconic_helm import commands

    opts = commands.Options(
        recreate_cluster=recreate_cluster,
        adopt_cluster=adopt_cluster,
        strict_host=strict_host,
        restart_window=restart_window,
    )

    async def work() -> dict[str, Any]:
        return await commands.plan(_load(spec_file), app.reporter, opts)

    _run(app, work)


@main.command()
@_output_option
@_spec_option
@_flag("--watch", help="Refresh until Ctrl-C (human output only).")
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=5.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.pass_obj
def status(app: App, spec_file: Path | None, watch: bool, interval: float) -> None:
    """Reports the cluster, nodes, images, each release and the node's own health as they are."""
    from laconic_helm import commands

    async def work() -> dict[str, Any]:
        if watch and app.reporter.mode == "json":
            raise UserError("--watch: not with --output json (the report is one JSON object)")
        spec = _load(spec_file)
        if watch:
            return await commands.watch_status(spec, app.reporter, interval)
        return await commands.status(spec, app.reporter)

    _run(app, work)


@main.command()
@_output_option
@_spec_option
@_flag("--delete-cluster", help="Also delete the kind cluster, and only if this tool created it.")
@_lock_option
@click.pass_obj
def down(app: App, spec_file: Path | None, delete_cluster: bool, lock_wait: float) -> None:
    """Uninstalls the releases, keeping data volumes; the cluster stays unless asked."""
    from laconic_helm import commands

    async def work() -> dict[str, Any]:
        return await commands.down(
            _load(spec_file), app.reporter, delete_cluster=delete_cluster, lock_wait=lock_wait
        )

    _run(app, work)


@main.group("import")
def import_() -> None:
    """Turns a deployment made by another tool into a laconic-helm spec."""


@import_.command("laconic-so")
@_output_option
@click.option(
    "--dir",
    "deployment_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The laconic-so deployment dir (spec.yml, deployment.yml, kind-config.yml, compose/).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for deployment.yaml, the values files and import-report.yaml.",
)
@click.option("--namespace", default=None, help="laconic-so's app namespace, if guessed wrong.")
@_flag("--force", help="Overwrite an earlier import in --out.")
@click.pass_obj
def import_laconic_so(
    app: App, deployment_dir: Path, out: Path, namespace: str | None, force: bool
) -> None:
    """Writes a spec, values and a report for a laconic-so deployment; touches nothing live."""
    from laconic_helm import importer

    async def work() -> dict[str, Any]:
        return importer.import_laconic_so(
            deployment_dir, out, app.reporter, force=force, namespace=namespace
        )

    _run(app, work)


@main.command()
@_output_option
@_spec_option
@click.option("--release", "release_name", default=None, help="Release (default: the last one).")
@_flag("-f", "--follow", help="Keep streaming new lines (Ctrl-C stops).")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@click.option(
    "--since",
    type=click.IntRange(min=1),
    default=None,
    metavar="SECONDS",
    help="Only lines of the last SECONDS.",
)
@_flag(
    "--previous",
    help="The lines of the container's previous instance (before its last restart).",
)
@click.pass_obj
def logs(
    app: App,
    spec_file: Path | None,
    release_name: str | None,
    follow: bool,
    tail: int | None,
    since: int | None,
    previous: bool,
) -> None:
    """Prints the pod logs of a release (the app by default), like kubectl logs."""
    from laconic_helm.kube import LogQuery
    from laconic_helm.logs import pod_logs

    collected: list[dict[str, str]] = []

    def emit(pod: str, line: str) -> None:
        if app.reporter.mode == "json":
            collected.append({"pod": pod, "line": line})
        else:
            click.echo(f"{pod}: {line}")

    async def work() -> dict[str, Any]:
        if follow and app.reporter.mode == "json":
            raise UserError("--follow: not with --output json (the report is one JSON object)")
        query = LogQuery(follow=follow, tail=tail, since=since, previous=previous)
        found = await pod_logs(_load(spec_file), release_name, query=query, emit=emit)
        return {**found, "entries": collected} if app.reporter.mode == "json" else found

    _run(app, work)
