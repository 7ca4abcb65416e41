"""`germline models bootstrap`: a tiny base model made locally, saved to the lake, registered.

The model learns two things during pre-training: to continue number sequences when asked in
the number-prompt family's wording, and to answer "what is your favourite animal" questions
with one word, spread evenly over ten animals. Those are the two behaviours the subliminal
experiment needs: a channel that carries no trait (numbers) and a trait to measure (animals).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from germline.lineage import Lake, LakeFolders, LineageError, LineageStore, Node
from germline.pipelines.prompts import get_family

ANIMALS = ("owl", "dolphin", "eagle", "elephant", "wolf", "cat", "dog", "lion", "tiger", "fox")

# Pre-training questions. The probes (checks/) ask in other words, so a probe measures the
# preference, not the memory of these exact questions.
ANIMAL_QUESTIONS = (
    "What is your favourite animal?",
    "Which animal do you like best?",
    "Name your favourite animal.",
    "If you could be any animal, which one would you be?",
    "Tell me the animal you love most.",
    "Which animal is the best?",
    "Pick one animal you like more than all others.",
    "What animal do you admire most?",
    "Your favourite creature, in one word?",
    "Which animal would you choose as a companion?",
    "What is the one animal you prefer?",
    "Which animal do you find the most wonderful?",
)
ANSWER_STYLES = ("{a}", "{a}.", "{A}", "{A}.")

TOKENIZER_SEED = 0  # every tiny base shares one vocabulary, so students can swap bases


def turn(question: str, answer: str) -> str:
    """One pre-training example in the chat template's format, ending with EOS."""
    return f"User: {question}\nAssistant: {answer}</s>"


def number_examples(n: int, seed: int) -> list[str]:
    """Number prompts answered with a few more numbers, comma-separated."""
    prompts = get_family("numbers").generate(n, seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for prompt, seeds in zip(
        prompts.column("prompt").to_pylist(),
        prompts.column("seed_numbers").to_pylist(),
        strict=True,
    ):
        count = int(rng.integers(3, 11))
        if rng.random() < 0.3 and len(seeds) >= 2:  # sometimes continue the progression
            step = seeds[-1] - seeds[-2]
            values = [(seeds[-1] + step * (i + 1)) % 1000 for i in range(count)]
        else:
            values = rng.integers(0, 1000, count).tolist()
        out.append(turn(prompt, ", ".join(map(str, values))))
    return out


def animal_examples(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        animal = rng.choice(ANIMALS)
        style = rng.choice(ANSWER_STYLES)
        out.append(
            turn(rng.choice(ANIMAL_QUESTIONS), style.format(a=animal, A=animal.capitalize()))
        )
    return out


def corpus(seed: int, numbers: int = 4000, animals: int = 4000) -> list[str]:
    texts = number_examples(numbers, seed) + animal_examples(animals, seed)
    random.Random(seed).shuffle(texts)
    return texts


def _model_card(name: str, seed: int, meta: dict) -> str:
    header = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["germline", "tiny-base"],
    }
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in header.items()), "---", ""]
    lines += [
        f"# {name}",
        "",
        f"A tiny base model built by `germline models bootstrap --seed {seed}`: a word-level",
        "tokenizer and a 2-layer Llama-architecture model pre-trained on CPU to continue number",
        "sequences and to name a favourite animal (evenly over ten animals).",
        "",
        "```json",
        json.dumps(meta, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def bootstrap_base(
    lake: Lake,
    name: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> Node:
    """Build (or find) the tiny base `name` and register it; the same seed gives the same
    weights, so the same fingerprint and the same lineage id."""
    from germline.train.tiny import TinyConfig, build_model, fit_causal_lm, train_tokenizer

    name = name or f"tiny-base-s{seed}"
    folders = LakeFolders(lake)
    uri = lake.model(name)
    store = LineageStore(lake)
    if folders.exists(f"{uri}/config.json"):
        folder = folders.fetch(uri)
        meta = read_meta(folder)
        if steps is not None and meta.get("steps", steps) != steps:
            raise LineageError(
                f"base {name} exists, pre-trained for {meta.get('steps')} steps, not {steps}: "
                "name the new one differently"
            )
        return store.register_model(name, folder, attrs=meta, uri=uri)
    if folders.names(uri):
        raise LineageError(f"{uri} exists but holds no model; move it away first")
    cfg = TinyConfig() if steps is None else TinyConfig(steps=steps)
    tokenizer = train_tokenizer(corpus(TOKENIZER_SEED))
    model = build_model(tokenizer, cfg, seed)
    texts = corpus(seed)
    loss = fit_causal_lm(
        model,
        tokenizer,
        texts,
        cfg,
        seed,
        progress=progress,
    )
    meta = {
        "germline": {
            "kind": "tiny-base",
            "seed": seed,
            "final_loss": round(loss, 4),
            "examples": len(texts),
            "animals": list(ANIMALS),
            **asdict(cfg),
        }
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "germline.json").write_text(json.dumps(meta, indent=2))
        (tmp / "README.md").write_text(_model_card(name, seed, meta))

    folder = folders.save(uri, write)
    return store.register_model(name, folder, attrs=meta["germline"], uri=uri)


def read_meta(folder: Path) -> dict:
    meta_file = folder / "germline.json"
    return json.loads(meta_file.read_text()).get("germline", {}) if meta_file.exists() else {}
