"""The root `germline` group: the lake options, logging, and the one place that turns
germline's errors into a line on stderr and an exit code.

A `GermlineError` (or subclass) prints `error: ...` (`aborted: ...` for a `RunAborted`) and
exits with its class's `exit_code`: 2 for bad input, 1 for a run stopped on purpose. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import warnings
from importlib.metadata import version
from typing import Any, NoReturn

import click

from germline.core import GermlineError, InputError, RunAborted, plain
from germline.pipelines.cli.output import key_values
from germline.storage import Lake


def one_line(exc: BaseException) -> str:
    """An error as one line: storage errors from deltalake span several, and carry Rust
    backtrace frames that say nothing to the user."""
    return "; ".join(line.strip() for line in plain(exc).splitlines() if line.strip())


def os_error(exc: OSError) -> InputError:
    """A file-system error that reached the command (a lake on a read-only mount, a full
    disk, a folder where a file should be) as the input error it is: the user's to fix."""
    where = f" {exc.filename}" if exc.filename else ""
    return InputError(f"cannot use{where}: {exc.strerror or plain(exc)}")


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


def fail(exc: GermlineError) -> NoReturn:
    """Print the error as one line and exit with its code."""
    prefix = "aborted" if isinstance(exc, RunAborted) else "error"
    click.echo(f"{prefix}: {one_line(exc)}", err=True)
    raise click.exceptions.Exit(exc.exit_code)


class GermlineGroup(click.Group):
    """Hoists the lake options; turns germline's errors, from the group's own options and
    from any command, into one line and an exit code."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except GermlineError as exc:
            fail(exc)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _hoist(args, set(self.commands)))

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except GermlineError as exc:
            fail(exc)
        except OSError as exc:
            if logging.getLogger().isEnabledFor(logging.INFO):  # --verbose: where it came from
                raise
            fail(os_error(exc))


def _quiet_third_parties() -> None:
    """A quiet default: no per-load progress bars or deprecation chatter from the model
    libraries (set before they are imported, which happens lazily in the commands)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for module in ("transformers", "peft", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)


@click.group(cls=GermlineGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    callback=key_values(),
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
    ctx.obj = {"lake": Lake.resolve(lake, storage_options)}
