"""`germline models bootstrap`: a tiny base model made locally, saved to the lake, registered.

A word-level tokenizer and a 2-layer Llama model (models/tiny.py) pre-trained on the corpus of
models/corpus.py: number continuations and favourite-animal answers spread evenly over ten
animals. The same seed gives the same weights, hence the same fingerprint and lineage id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from germline.core import InputError
from germline.lineage import LineageStore, Node, check_name
from germline.pipelines.models.card import model_card
from germline.pipelines.models.corpus import ANIMALS, TOKENIZER_SEED, corpus
from germline.pipelines.models.folder import find_made, register_model, write_model
from germline.storage import Lake, LakeFolders

Progress = Callable[[int, int, float], None]  # (step, steps, loss)


def bootstrap_base(
    lake: Lake,
    name: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    progress: Progress | None = None,
) -> Node:
    """Build (or find) the tiny base `name` and register it; the same seed gives the same
    weights, so the same fingerprint and the same lineage id."""
    from germline.pipelines.models.tiny import (
        TinyConfig,
        build_model,
        fit_causal_lm,
        train_tokenizer,
    )

    name = check_name(name or f"tiny-base-s{seed}")  # before minutes of training, not after
    store = LineageStore(lake)
    made = find_made(store, name, marker="config.json")
    if made is not None:
        folder, meta = made
        if steps is not None and meta.get("steps", steps) != steps:
            raise InputError(
                f"base {name} exists, pre-trained for {meta.get('steps')} steps, not {steps}: "
                "name the new one differently"
            )
        return register_model(store, name, folder, meta)
    uri = lake.model(name)
    if LakeFolders(lake).names(uri):
        raise InputError(f"{uri} exists but holds no model; move it away first")
    cfg = TinyConfig() if steps is None else TinyConfig(steps=steps)
    tokenizer = train_tokenizer(corpus(TOKENIZER_SEED))
    model = build_model(tokenizer, cfg, seed)
    texts = corpus(seed)
    loss = fit_causal_lm(model, tokenizer, texts, cfg, seed, progress=progress)
    meta = {
        "kind": "tiny-base",
        "seed": seed,
        "final_loss": round(loss, 4),
        "examples": len(texts),
        "animals": list(ANIMALS),
        **asdict(cfg),
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    card = model_card(
        name,
        f"A tiny base model built by `germline models bootstrap --seed {seed}`: a word-level "
        "tokenizer and a 2-layer Llama-architecture model pre-trained on CPU to continue "
        "number sequences and to name a favourite animal (evenly over ten animals).",
        library="transformers",
        tags=["tiny-base"],
        details={"germline": meta},
    )
    folder = write_model(lake, name, write, meta, card=card)
    return register_model(store, name, folder, meta)
