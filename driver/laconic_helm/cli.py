"""The `laconic-helm` command line: parse, call the domain function, render. No logic here."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from laconic_helm import __version__
from laconic_helm.errors import EXIT_FAILED, EXIT_OK, LaconicHelmError
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
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = App(Reporter(output), verbose)


@main.command()
@click.pass_obj
def doctor(app: App) -> None:
    """Checks the external tools the driver needs; exits 1 when a required one is missing."""
    from laconic_helm import tools

    async def work() -> dict[str, Any]:
        statuses = await tools.doctor()
        for status in statuses:
            app.reporter.line(status.line())
        missing = [s.name for s in statuses if s.required and not s.ok]
        return {
            "ok": not missing,
            "error": f"missing or unusable: {', '.join(missing)}" if missing else None,
            "tools": [vars(s) for s in statuses],
        }

    _run(app, work)


@main.group()
def images() -> None:
    """Moves local Docker images into a kind cluster's nodes."""


@images.command("load")
@click.option("--cluster", required=True, help="kind cluster name (its nodes are found by label).")
@click.argument("image", nargs=-1, required=True)
@click.pass_obj
def images_load(app: App, cluster: str, image: tuple[str, ...]) -> None:
    """Loads IMAGEs into every node of the cluster, sending only what a node lacks."""
    from laconic_helm import images as loader

    async def work() -> dict[str, Any]:
        results = await loader.ensure_images(cluster, image, app.reporter)
        return {"images": [r.as_dict() for r in results]}

    _run(app, work)


@main.group("import")
def import_() -> None:
    """Turns a deployment made by another tool into a laconic-helm spec."""


@import_.command("laconic-so")
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
@click.option("--force", is_flag=True, help="Overwrite an earlier import in --out.")
@click.pass_obj
def import_laconic_so(
    app: App, deployment_dir: Path, out: Path, namespace: str | None, force: bool
) -> None:
    """Writes a spec, values and a report for a laconic-so deployment; touches nothing live."""
    from laconic_helm import migrate

    async def work() -> dict[str, Any]:
        return migrate.import_laconic_so(
            deployment_dir, out, app.reporter, force=force, namespace=namespace
        )

    _run(app, work)
