"""`germline run CONFIG.yaml` and `germline report RUN_ID`."""

from __future__ import annotations

from pathlib import Path

import click

from germline.pipelines.output import FORMATS, emit_json


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
    per step, then the report. The language experiment (bases, teacher, number data,
    students, serving, probes) is the default; a config with `kind: mnist-aux` runs the
    paper's MLP experiment on digits."""
    from germline.pipelines.generate_config import load_config

    lake = ctx.obj["lake"]
    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    if _kind(config_file, overrides) == "mnist-aux":
        from germline.pipelines.mnist_aux import run_mnist_aux
        from germline.pipelines.mnist_aux_config import MnistAuxConfig

        data = run_mnist_aux(lake, load_config(config_file, MnistAuxConfig, overrides), echo=echo)
    else:
        from germline.pipelines.experiment import run_experiment
        from germline.pipelines.experiment_config import ExperimentConfig

        verbose = ctx.find_root().params.get("verbose", 0) > 0
        config = load_config(config_file, ExperimentConfig, overrides)
        data = run_experiment(lake, config, echo=echo, verbose=verbose)
    from germline.lineage import LakeFolders

    click.echo(LakeFolders(lake).read_text(data["path"]))
    click.echo(f"report: {data['path']}")


def _kind(config_file: Path, overrides: tuple[str, ...]) -> str | None:
    """The config's `kind`, if it reads (load_config reports any problem)."""
    from germline.lineage import LineageError
    from germline.pipelines.generate_config import apply_override, read_yaml

    try:
        raw = read_yaml(config_file)
        for override in overrides:
            apply_override(raw, override, config_file)
    except LineageError:
        return None
    return raw.get("kind")


@click.command()
@click.argument("run_id")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def report(ctx: click.Context, run_id: str, fmt: str) -> None:
    """Print an experiment's report again (RUN_ID or a unique prefix of it)."""
    import json

    from germline.lineage import LakeFolders
    from germline.pipelines.report import find_report

    folders = LakeFolders(ctx.obj["lake"])
    run = find_report(ctx.obj["lake"], run_id)
    if fmt == "json":
        emit_json(json.loads(folders.read_text(f"{run}/report.json") or "{}"))
        return
    click.echo(folders.read_text(f"{run}/report.md"))
