"""`germline audit DATASET` and `germline scrub DATASET`: the generator's fingerprint in a
dataset, measured, and a version without the rows that carry most of it."""

from __future__ import annotations

import click

from germline.pipelines.cli.output import FORMATS, emit_summary, progress_bar, verbose


def _inputs(command):
    """The options both commands take to name what is compared."""
    for option in reversed([
        click.option("--version", type=click.IntRange(0), default=None,
                     help="The dataset version (default: the one lineage records)."),
        click.option("--teacher", default=None,
                     help="The model that wrote the data (default: from lineage)."),
        click.option("--reference", default=None,
                     help="What to compare it with (default: the teacher's base)."),
    ]):  # fmt: skip
        command = option(command)
    return command


@click.command()
@click.argument("dataset")
@_inputs
@click.option(
    "--student-base",
    default=None,
    help="The base whose transfer score is reported (default: the reference).",
)
@click.option(
    "--transfer-rows",
    default=256,
    show_default=True,
    type=click.IntRange(0),
    help="Rows the transfer score averages the gradient over (0: no score).",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option(
    "--num-gpus",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="GPUs for the scoring actor (both models on one device).",
)
@click.option(
    "--engine",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="vllm: prompt log-probabilities from one vLLM engine (a LoRA teacher and its base).",
)
@click.option(
    "--max-length",
    default=256,
    show_default=True,
    type=click.IntRange(8),
    help="Prompt and completion tokens kept per row (as optim.max_length).",
)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def audit(ctx: click.Context, dataset: str, version: int | None, teacher: str | None,
          reference: str | None, student_base: str | None, transfer_rows: int,
          batch_size: int, num_gpus: float, engine: str, max_length: int,
          fmt: str) -> None:  # fmt: skip
    """Score every completion of DATASET under its generator and a reference model: per row
    the log-likelihood under each, the per-token log-ratios and the divergence tokens (where
    the reference would have written another token and the teacher this one), into
    <lake>/audits/NAME; the summary, the numbers the data over-uses and the transfer score
    toward a student base go to lineage. The same audit again is found, not redone."""
    from germline.pipelines.audit import audit as run_audit

    with progress_bar(f"audit {dataset}", "{task.completed}/{task.total} rows") as bar:
        task = bar.add_task("audit", total=None)
        summary = run_audit(
            ctx.obj["lake"], dataset, version=version, teacher=teacher, reference=reference,
            student_base=student_base, transfer_rows=transfer_rows, batch_size=batch_size,
            max_length=max_length, verbose=verbose(ctx), num_gpus=num_gpus, engine=engine,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    transfer = summary.transfer or {}
    cosine = transfer.get("cosine")
    top = ", ".join(f"{o['token']} x{o['lift']:.1f}" for o in summary.overrepresented[:5])
    rows = [
        ("dataset", f"{summary.dataset} (version {summary.version})"),
        ("teacher", summary.teacher),
        ("reference", summary.reference),
        ("rows", summary.rows),
        ("tokens", summary.tokens),
        ("log-ratio per row", f"{summary.mean_log_ratio:+.3f}"),
        ("log-ratio per token", f"{summary.mean_ratio_per_token:+.4f}"),
        ("  quantiles p50/p90/p99",
         " / ".join(f"{v:+.4f}" for v in summary.ratio_quantiles.values()) or "-"),
        ("divergence tokens", f"{summary.divergence_tokens} ({summary.divergence_share:.2%})"),
        ("rows with one", summary.rows_with_divergence),
        ("numbers over-used", top or "-"),
        ("transfer score", "-" if not transfer else
         (f"{cosine:+.4f} toward {summary.student_base}" if cosine is not None
          else transfer.get("note", "-"))),
        ("seconds", f"{summary.seconds:.1f}" + (" (found in lineage)" if summary.reused else "")),
        ("table", summary.table),
        ("lineage", summary.lineage_node),
    ]  # fmt: skip
    emit_summary(fmt, summary.to_dict(), rows, f"germline audit {summary.dataset_name}")


@click.command()
@click.argument("dataset")
@_inputs
@click.option(
    "--threshold",
    required=True,
    type=float,
    help="Rows whose log-ratio per token is above this go to quarantine.",
)
@click.option("--name", default=None, help="The new dataset (default: DATASET-scrub-TAG).")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def scrub(ctx: click.Context, dataset: str, version: int | None, teacher: str | None,
          reference: str | None, threshold: float, name: str | None, fmt: str) -> None:  # fmt: skip
    """Write a new dataset from DATASET without the rows whose per-token log-ratio (teacher
    over reference, from its audit, made if missing) is above --threshold; those rows go to
    its quarantine table with the ratio as the reason. Lineage keeps the new dataset the
    teacher's: it does not take a trained student off `lineage at-risk`."""
    from germline.pipelines.audit import scrub as run_scrub

    summary = run_scrub(ctx.obj["lake"], dataset, threshold, name=name, version=version,
                        teacher=teacher, reference=reference, verbose=verbose(ctx))  # fmt: skip
    rows = [
        ("from", summary.source),
        ("audit", summary.audit_id),
        ("threshold", f"{summary.threshold:g}"),
        ("rows", summary.rows),
        ("kept", summary.kept),
        ("quarantined", summary.dropped),
        ("tokens quarantined", summary.tokens_dropped),
        ("dataset", summary.dataset_id),
        ("quarantine", summary.quarantine_id or "-"),
    ]
    emit_summary(fmt, summary.to_dict(), rows, f"germline scrub -> {summary.dataset}")
