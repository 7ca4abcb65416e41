"""`germline run CONFIG.yaml` and `germline report RUN_ID`."""

from __future__ import annotations

from pathlib import Path

import click

from germline.pipelines.output import FORMATS, emit_json


@click.command()
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(path_type=Path))
@click.pass_context
def run(ctx: click.Context, config_file: Path) -> None:
    """Run an experiment end to end (bases, teacher, data, students, serving, probes, report),
    skipping every step the lake shows done; prints a line per step, then the report."""
    from germline.pipelines.experiment import run_experiment
    from germline.pipelines.experiment_config import ExperimentConfig
    from germline.pipelines.generate_config import load_config
    from germline.pipelines.report import render

    config = load_config(config_file, ExperimentConfig)
    verbose = ctx.find_root().params.get("verbose", 0) > 0
    data = run_experiment(ctx.obj["lake"], config, echo=lambda m: click.echo(m, err=True),
                          verbose=verbose)  # fmt: skip
    click.echo(render(data))
    click.echo(f"report: {data['path']}")


@click.command()
@click.argument("run_id")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def report(ctx: click.Context, run_id: str, fmt: str) -> None:
    """Print an experiment's report again (RUN_ID or a unique prefix of it)."""
    import json

    from germline.pipelines.report import find_report

    path = find_report(ctx.obj["lake"], run_id)
    if fmt == "json":
        emit_json(json.loads(path.with_name("report.json").read_text()))
        return
    click.echo(path.read_text())
