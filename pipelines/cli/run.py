"""`germline run CONFIG.yaml` and `germline report RUN_ID`: experiments and their reports."""

from __future__ import annotations

from pathlib import Path

import click

from germline.pipelines.cli.output import FORMATS, emit_json, verbose


@click.command()
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a setting of the file, e.g. --set train.objective.kind=distill (repeatable); "
    "a changed setting gives a new run id and new artifacts where it matters",
)
@click.pass_context
def run(ctx: click.Context, config_file: Path, overrides: tuple[str, ...]) -> None:
    """Run an experiment end to end, skipping every step the lake shows done; prints a line
    per step, then the report. The config's `kind` picks the experiment: `kind: panel` (the
    main job: teachers of several animals on several bases, each compared with the others)
    or the owl experiment (bases, one teacher, number data, students, serving, probes) when it
    has none; `kind: mnist-aux` runs the paper's MLP experiment on digits."""
    from germline.pipelines.config import read_config, validate
    from germline.pipelines.experiments import kind_of
    from germline.storage import LakeFolders

    lake = ctx.obj["lake"]
    raw = read_config(config_file, overrides)
    kind = kind_of(raw)
    config = validate(raw, kind.config, config_file)
    data = kind.run(lake, config, lambda m: click.echo(m, err=True), verbose(ctx))
    click.echo(LakeFolders(lake).read_text(data["path"]))
    click.echo(f"report: {data['path']}")


@click.command()
@click.argument("run_id")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def report(ctx: click.Context, run_id: str, fmt: str) -> None:
    """Print an experiment's report again (RUN_ID or a unique prefix of it)."""
    import json

    from germline.pipelines.experiments.reports import find_report
    from germline.storage import LakeFolders

    folders = LakeFolders(ctx.obj["lake"])
    run = find_report(ctx.obj["lake"], run_id)
    if fmt == "json":
        emit_json(json.loads(folders.read_text(f"{run}/report.json") or "{}"))
        return
    click.echo(folders.read_text(f"{run}/report.md"))
