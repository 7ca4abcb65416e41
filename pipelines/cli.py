"""The `germline` command. Thin: it parses, calls one public function, and prints.

Bad input anywhere below surfaces as a one-line `error: ...` on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import os
import warnings
from importlib.metadata import version

import click

from germline.lineage import Lake, LineageError
from germline.pipelines.experiment_cli import report, run
from germline.pipelines.generate_cli import generate
from germline.pipelines.lineage_cli import lineage
from germline.pipelines.models_cli import models
from germline.pipelines.probe_cli import probe
from germline.pipelines.serve_cli import serve
from germline.pipelines.train_cli import train


def one_line(exc: BaseException) -> str:
    """An error as one line: storage errors from deltalake span several."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


# The group's options that also work after the command, where a job submission puts them:
# `germline run owl.yaml --lake s3://...` reads as `germline --lake s3://... run owl.yaml`.
_HOISTED = ("--lake", "--storage-option")


def _hoist(args: list[str], commands: set[str]) -> list[str]:
    """Move the lake options found after the command name in front of it (up to a `--`)."""
    head: list[str] = []
    rest = list(args)
    while rest and rest[0] not in commands:  # the group's own options, and their values
        head.append(rest.pop(0))
    moved: list[str] = []
    kept: list[str] = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if token == "--":
            kept.extend(rest[i:])
            break
        name = token.split("=", 1)[0]
        if name in _HOISTED and i > 0:
            takes_value = "=" not in token and i + 1 < len(rest)
            moved.extend(rest[i : i + 2] if takes_value else [token])
            i += 2 if takes_value else 1
            continue
        kept.append(token)
        i += 1
    return head + moved + kept


class _Germline(click.Group):
    """Turns the library's input errors into one line and exit code 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _hoist(args, set(self.commands)))

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LineageError as exc:
            click.echo(f"error: {one_line(exc)}", err=True)
            ctx.exit(2)
        except RuntimeError as exc:
            from germline.pipelines.generate import RunAborted

            if not isinstance(exc, RunAborted):
                raise
            click.echo(f"aborted: {one_line(exc)}", err=True)
            ctx.exit(1)


def _quiet_third_parties() -> None:
    """A quiet default: no per-load progress bars or deprecation chatter from the model
    libraries (set before they are imported, which happens lazily in the commands)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for module in ("transformers", "peft", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)


def _storage_options(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict:
    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        options[key] = value
    return options


@click.group(cls=_Germline, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--lake",
    envvar="GERMLINE_LAKE",
    metavar="PATH|URI",
    help="Lake root: a folder or an object-store URI. [env GERMLINE_LAKE; default ./lake]",
)
@click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_storage_options,
    help="Storage option for an object-store lake, in deltalake's keys: used for its tables "
    "and, on S3, for its model and report folders (repeatable; also "
    "GERMLINE_STORAGE_OPTIONS as a JSON object).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(version("germline"), prog_name="germline")
@click.pass_context
def cli(ctx: click.Context, lake: str | None, storage_options: dict, verbose: int) -> None:
    """germline: teacher-made training data, students fine-tuned on it, and the lineage that
    tells which students may have inherited a teacher's traits."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:
        _quiet_third_parties()
    try:
        ctx.obj = {"lake": Lake.resolve(lake, storage_options)}
    except LineageError as exc:
        click.echo(f"error: {one_line(exc)}", err=True)
        ctx.exit(2)


cli.add_command(generate)
cli.add_command(lineage)
cli.add_command(models)
cli.add_command(train)
cli.add_command(serve)
cli.add_command(probe)
cli.add_command(run)
cli.add_command(report)


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Build a small lineage graph in the lake and show what lineage tells about it.

    Two bases, an owl teacher, its number data, students on the same and on another base,
    and a second generation. The weights are small random arrays (the real models come with
    `germline run`); the graph, its queries and its picture are real.
    """
    from germline.pipelines.demo import run_demo

    run_demo(ctx.obj["lake"], echo=click.echo)


def main() -> None:
    cli(prog_name="germline")
