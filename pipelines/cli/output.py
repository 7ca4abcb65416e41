"""What the commands share: what they print (tables for people or JSON for programs, chosen
with `--format`; the progress bar of long steps, on stderr, only on a terminal, gone when
done) and the options several of them take (KEY=VALUE lists, whether `-v` was given)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from germline.pipelines.config import parse_assignment, yaml_value


def console() -> Console:
    # A pipe gets wide lines, so ids are never cut or wrapped for grep and friends.
    return Console(width=None if sys.stdout.isatty() else 240, highlight=False)


def short_fingerprint(fingerprint: str | None) -> str:
    if not fingerprint:
        return "-"
    algo, _, digest = fingerprint.partition(":")
    return f"{algo}:{digest[:12]}"


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def emit_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> None:
    table = Table(*columns, title=title, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    console().print(table)


def emit_summary(
    fmt: str, data: dict[str, Any], rows: Sequence[tuple[str, Any]], title: str
) -> None:
    """A job's summary: all of `data` as JSON, or the rows people read first as a table."""
    if fmt == "json":
        emit_json(data)
    else:
        emit_table(["", ""], rows, title=title)


def progress_bar(label: str, *columns: str) -> Any:
    """The commands' progress bar on stderr: a label, the bar, the given text columns, time
    spent and left; drawn only on a terminal and gone when done (the summary follows)."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        *(TextColumn(c) for c in columns),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=console,
        disable=not console.is_terminal,
    )


@contextmanager
def step_bar(label: str) -> Iterator[Callable[[int, int, float], None]]:
    """A progress bar for a training loop, fed by the callback it yields: (step, steps, loss)."""
    with progress_bar(
        label, "step {task.completed}/{task.total}", "loss {task.fields[loss]}"
    ) as bar:
        task = bar.add_task(label, total=None, loss="-")

        def progress(step: int, steps: int, loss: float) -> None:
            bar.update(task, completed=step, total=steps, loss=f"{loss:.4f}")

        yield progress


FORMATS = click.Choice(["table", "json"])

format_option = click.option(
    "--format", "fmt", type=FORMATS, default="table", show_default=True, help="Output format."
)


def key_values(yaml_values: bool = False) -> Callable[[click.Context, click.Parameter, Any], dict]:
    """A click callback that reads a repeatable KEY=VALUE option into a dict (values read as
    YAML with `yaml_values`, so 4096 is an int and true a bool); a bad item is an InputError
    naming the option (one line, exit 2)."""

    def parse(_ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> dict:
        out: dict[str, Any] = {}
        for item in items:
            key, value = parse_assignment(item, param.opts[0])
            out[key] = yaml_value(value, param.opts[0]) if yaml_values else value
        return out

    return parse


def verbose(ctx: click.Context) -> bool:
    """Whether the root command got -v (or more)."""
    return ctx.find_root().params.get("verbose", 0) > 0
