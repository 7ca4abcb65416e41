"""Printing query results as a table for people or JSON for programs (`--format`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

FORMATS = click.Choice(["table", "json"])


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


def progress_bar(label: str, *columns: str) -> Any:
    """The commands' progress bar on stderr: a label, the bar, the given text columns, time
    spent and left; drawn only on a terminal and gone when done (the summary follows)."""
    from rich.console import Console
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
