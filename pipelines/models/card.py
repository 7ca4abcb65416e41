"""Model cards: Hugging Face metadata up top, what germline knows about the model below.

One writer for every model germline makes (tiny bases, teachers, students). The metadata
follows the Hub's conventions (base_model, base_model_relation, datasets, library_name), so a
folder uploads to a hub or loads into tools that read cards as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def model_card(
    name: str,
    summary: str,
    *,
    library: str,
    tags: Sequence[str],
    base: str | None = None,
    relation: str | None = None,
    datasets: Sequence[str] | None = None,
    facts: Sequence[tuple[str, Any]] = (),
    details: dict[str, Any] | None = None,
) -> str:
    """The card's text (README.md): the Hub's metadata block, a title, `summary` (paragraphs
    separated by blank lines), a table of `facts`, and `details` as JSON."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=base,
        base_model_relation=relation,
        datasets=list(datasets) if datasets else None,
        library_name=library,
        tags=["germline", *tags],
        pipeline_tag="text-generation",
    )
    lines = [f"---\n{data.to_yaml()}\n---", "", f"# {name}", "", summary.strip(), ""]
    if facts:
        lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in facts), ""]
    if details:
        lines += ["```json", json.dumps(details, indent=2), "```", ""]
    return "\n".join(lines)
