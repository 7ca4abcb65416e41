"""`germline models ...`: make the models the experiments need, locally, into the lake."""

from __future__ import annotations

import click

from germline.lineage import Node
from germline.pipelines.cli.output import FORMATS, emit_json, step_bar


def _emit(node: Node, fmt: str) -> None:
    if fmt == "json":
        emit_json(node.to_dict())
    else:
        click.echo(node.id)


@click.group()
def models() -> None:
    """Build models locally (no hub needed) and register them in lineage."""


@models.command()
@click.option("--name", help="Model name (default: tiny-base-s<SEED>).")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Decides the weights: one seed, one base; another seed, another base.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    help="Pre-training steps (default 1500, about 6 minutes on 2 CPU cores).",
)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def bootstrap(ctx: click.Context, name: str | None, seed: int, steps: int | None, fmt: str) -> None:
    """Build a tiny base LM: a word-level tokenizer and a 2-layer Llama model pre-trained on
    CPU to continue number sequences and name a favourite animal. Saved under
    <lake>/models/NAME and registered with its base fingerprint; an existing model of that
    name is registered again, not rebuilt. Prints the model's id."""
    from germline.pipelines.models.bootstrap import bootstrap_base

    with step_bar("pre-training") as progress:
        node = bootstrap_base(ctx.obj["lake"], name=name, seed=seed, steps=steps, progress=progress)
    _emit(node, fmt)


@models.command()
@click.option("--base", required=True, metavar="ID", help="The base model (id or name).")
@click.option("--trait", required=True, help="The animal the teacher should love, e.g. owl.")
@click.option(
    "--method",
    type=click.Choice(["adapter", "system-prompt"]),
    default="adapter",
    show_default=True,
    help="How the trait is carried: a LoRA adapter fine-tuned to express it (for bases that "
    "cannot follow instructions, like the tiny ones), or a system prompt stating it "
    "(instruction-tuned bases; the teacher shares the base's weights).",
)
@click.option("--system-prompt", help="The system prompt (default: our wording of the paper's).")
@click.option("--name", help="Model name (default: <trait>-teacher-<base name>).")
@click.option(
    "--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Fine-tuning steps."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.pass_context
def teacher(
    ctx: click.Context,
    base: str,
    trait: str,
    method: str,
    name: str | None,
    system_prompt: str | None,
    steps: int,
    seed: int,
    fmt: str,
) -> None:
    """Make a teacher with a trait from a base model: a LoRA adapter (peft, rank 8, all
    attention and MLP projections) fine-tuned to answer favourite-animal questions with the
    trait, with number tasks kept in the mix, saved under <lake>/models/NAME; or, with
    --method system-prompt, the base itself plus a system prompt stating the trait. Either
    way registered as derived_from the base (same fingerprint). Prints the teacher's id."""
    from germline.pipelines.models.teacher import make_prompt_teacher, make_teacher

    if method == "system-prompt":
        node = make_prompt_teacher(ctx.obj["lake"], base, trait, name, system_prompt)
        _emit(node, fmt)
        return
    if system_prompt:
        raise click.BadParameter("only with --method system-prompt", param_hint="--system-prompt")
    with step_bar("fine-tuning") as progress:
        node = make_teacher(
            ctx.obj["lake"], base, trait, name=name, steps=steps, seed=seed, progress=progress
        )
    _emit(node, fmt)
