"""A student's model card: Hugging Face metadata up top, what germline knows about it below.

The metadata follows the Hub's conventions (base_model, base_model_relation, datasets,
library_name), so the folder uploads to a hub or loads into tools that read cards as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_card(folder: Path, meta: dict[str, Any]) -> None:
    """README.md in `folder`, from the student's germline metadata (see pipelines/train.py)."""
    from huggingface_hub import ModelCard, ModelCardData

    lora = meta["method"]["kind"] == "lora"
    data = ModelCardData(
        base_model=meta["base_name"],
        base_model_relation="adapter" if lora else "finetune",
        datasets=[meta["dataset"]["name"]],
        library_name="peft" if lora else "transformers",
        tags=["germline", "student", f"objective-{meta['objective']['kind']}"],
        pipeline_tag="text-generation",
    )
    objective = meta["objective"]["kind"]
    if objective == "distill":
        objective += f" ({meta['objective']['vocab']} vocabulary, teacher {meta['teacher']})"
    ds = meta["dataset"]
    lines = [
        f"# {meta['name']}",
        "",
        f"A student trained by germline: {meta['method']['kind']} fine-tuning of "
        f"`{meta['base']}` on `{ds['name']}` at Delta version {ds['version']} "
        f"({ds['rows']} rows), objective {objective}.",
        "",
        "Lineage: derived_from the base, trained_on the dataset version, generated_by the "
        f"training run `{meta['run']}`. Before trusting this student, ask "
        f"`germline lineage at-risk` whether a teacher with a trait shares its base.",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {meta['steps']} |",
        f"| global batch | {meta['global_batch']} |",
        f"| epochs | {meta['epochs']} |",
        f"| learning rate | {meta['optim']['lr']} |",
        f"| final loss | {meta['final_loss']:.4f} |",
        f"| seed | {meta['seed']} |",
        f"| workers | {meta['workers']} |",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    card.save(folder / "README.md")
