"""`germline train CONFIG.yaml`: a student fine-tuned on Ray Train, into the model store."""

from __future__ import annotations

from pathlib import Path

import click

from germline.pipelines.cli.output import FORMATS, emit_summary, step_bar, verbose


@click.command()
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def train(ctx: click.Context, config_file: Path, fmt: str) -> None:
    """Fine-tune a student on a pinned version of a dataset (the latest when the config pins
    none) and write it, with its tokenizer and model card, to <lake>/models/STUDENT. Killed
    midway, the same command resumes from the last checkpoint. Input is checked before Ray
    starts: a missing dataset or version, an unknown model or a mismatched tokenizer exits 2."""
    from germline.pipelines.config import load_config
    from germline.pipelines.finetune import TrainConfig
    from germline.pipelines.finetune import train as run_train

    config = load_config(config_file, TrainConfig)
    with step_bar(f"train {config.student}") as progress:
        summary = run_train(ctx.obj["lake"], config, progress=progress, verbose=verbose(ctx))
    rows = [
        ("student", summary.student_id),
        ("base", summary.base_id),
        ("dataset", f"{summary.dataset_id} (version {summary.dataset_version})"),
        *([("teacher", summary.teacher_id)] if summary.teacher_id else []),
        ("rows", summary.rows),
        ("steps", summary.steps),
        ("global batch", summary.global_batch),
        ("loss first -> final", f"{summary.first_loss:.4f} -> {summary.final_loss:.4f}"),
        *([("resumed from step", summary.resumed_from)] if summary.resumed_from else []),
        *([("already trained", "yes")] if summary.already_trained else []),
        *(
            [("samples/s", f"{summary.samples_per_s:,.1f}"), ("seconds", f"{summary.seconds:.1f}")]
            if not summary.already_trained
            else []
        ),
        ("run", summary.run_id),
        ("folder", summary.model_dir),
    ]
    emit_summary(fmt, summary.to_dict(), rows, f"germline train {config.student}")
