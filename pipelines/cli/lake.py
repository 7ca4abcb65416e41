"""`germline lake`: housekeeping of the lake itself."""

from __future__ import annotations

import click


@click.group()
def lake() -> None:
    """Housekeeping of the lake's tables."""


@lake.command()
@click.option("--older-than", "hours", default=1, show_default=True, type=click.IntRange(0),
              help="Only files at least this many hours old (younger ones may be commits "
                   "in flight).")  # fmt: skip
@click.option("--apply", is_flag=True, help="Remove the files (default: only list them).")
@click.pass_context
def vacuum(ctx: click.Context, hours: int, apply: bool) -> None:
    """Find (and with --apply remove) data files no commit references: what a writer that
    lost a commit race leaves behind. Readers never see them; only disk space is at stake.
    Every table's rows and versions stay as they are."""
    from germline.storage.vacuum import sweep

    swept = sweep(ctx.obj["lake"], older_than_hours=hours, apply=apply)
    total = 0
    for one in swept:
        if one.files:
            total += len(one.files)
            click.echo(f"{one.table}: {len(one.files)} unreferenced files")
    verb = "removed" if apply else "found"
    hint = "" if apply or not total else " (--apply removes them)"
    click.echo(f"{verb} {total} unreferenced files in {len(swept)} tables{hint}")
