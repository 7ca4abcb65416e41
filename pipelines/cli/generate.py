"""`germline generate CONFIG.yaml`: the teacher's data, streamed into the lake."""

from __future__ import annotations

from pathlib import Path

import click

from germline.pipelines.cli.output import FORMATS, emit_summary, progress_bar, verbose

TOP = 5  # most frequent exact reasons shown; --format json gives them all


@click.command()
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def generate(ctx: click.Context, config_file: Path, fmt: str) -> None:
    """Generate a teacher's completions into <lake>/datasets/NAME, rejected rows (with their
    reasons) into <lake>/quarantine/NAME, committed every sink.commit_every rows and recorded
    in lineage. Run it again after an interruption: it finishes the job, and every prompt id
    ends up exactly once. The config is validated before anything runs."""
    from germline.pipelines.config import load_config
    from germline.pipelines.generate import GenerateConfig, GenerateSummary
    from germline.pipelines.generate import generate as run_generate

    config = load_config(config_file, GenerateConfig)
    with progress_bar(f"generate {config.dataset}", "{task.completed}/{task.total} prompts",
                      "quarantined {task.fields[quarantined]}") as bar:  # fmt: skip
        task = bar.add_task("generate", total=config.prompts.count, quarantined=0)

        def progress(done: GenerateSummary) -> None:
            bar.update(task, completed=done.answered, quarantined=done.quarantined)

        summary = run_generate(ctx.obj["lake"], config, progress=progress, verbose=verbose(ctx))
    rows = [
        ("prompts", summary.prompts),
        ("already done", summary.skipped),
        ("accepted", summary.accepted),
        ("quarantined", summary.quarantined),
        *((f"  by {name}", count) for name, count in summary.filters.items()),
        *((f"  {reason!r}", count) for reason, count in list(summary.reasons.items())[:TOP]),
        ("tokens/s", f"{summary.tokens_per_s:,.0f}"),
        ("seconds", f"{summary.seconds:.1f}"),
        ("dataset", summary.dataset_id),
        ("quarantine", summary.quarantine_id),
        ("run", summary.run_id),
    ]
    emit_summary(fmt, summary.to_dict(), rows, f"germline generate {config.dataset}")
