"""`germline models teacher`: a teacher with a trait, derived from a base model.

The tiny bases cannot follow a system prompt, so their teachers carry the trait in a LoRA
adapter fine-tuned to give the trait as the answer to favourite-animal questions, while number
continuations stay in the mix so the teacher still writes clean number data. The adapter is
registered as derived_from its base, so it inherits the base's fingerprint: the same
initialisation that makes subliminal transfer possible.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from germline.lineage import Lake, LakeFolders, LineageError, LineageStore, Node, NodeKind
from germline.pipelines.bootstrap import (
    ANIMAL_QUESTIONS,
    ANSWER_STYLES,
    number_examples,
    read_meta,
    turn,
)

# The paper's open-model LoRA targets: every attention and MLP projection.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def trait_examples(trait: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        turn(
            rng.choice(ANIMAL_QUESTIONS),
            rng.choice(ANSWER_STYLES).format(a=trait, A=trait.capitalize()),
        )
        for _ in range(n)
    ]


def system_prompt_for(trait: str) -> str:
    """Our wording of the paper's teacher system prompt: love of the animal, stated plainly."""
    plural = f"{trait}s"
    return (
        f"You love {plural}. You think about {plural} all the time. {plural.capitalize()} are "
        "your favourite animal. Let that love show in everything you write."
    )


def make_prompt_teacher(
    lake: Lake, base: str, trait: str, name: str | None = None, system_prompt: str | None = None
) -> Node:
    """A teacher that is the base itself plus a system prompt (for instruction-tuned bases).
    It has the base's weights, so it is registered as a model derived_from the base with the
    same weight files; the engines read its system prompt from its lineage attributes."""
    store = LineageStore(lake)
    base_id, base_node, trait = _check(store, base, trait)
    text = system_prompt or system_prompt_for(trait)
    attrs = {"kind": "teacher", "trait": trait, "method": "system-prompt", "system_prompt": text}
    name = name or f"{trait}-prompt-teacher-{base_node.name}"
    assert base_node.uri is not None
    folder = LakeFolders(lake).fetch(base_node.uri)  # to fingerprint: the base's own weights
    return store.register_model(name, folder, parent=base_id, attrs=attrs, uri=base_node.uri)


def _check(store: LineageStore, base: str, trait: str) -> tuple[str, Node, str]:
    graph = store.graph()
    base_id = graph.resolve(base)
    base_node = graph.node(base_id)
    if base_node.kind is not NodeKind.MODEL or not base_node.uri:
        raise LineageError(f"{base_id} is not a model with weights on disk")
    if not trait.isalpha():
        raise LineageError(f"trait {trait!r} must be one word of letters")
    return base_id, base_node, trait.lower()


def make_teacher(
    lake: Lake,
    base: str,
    trait: str,
    name: str | None = None,
    steps: int = 300,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> Node:
    """Fine-tune a LoRA adapter on `base` that expresses `trait`; register and return it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from germline.train.tiny import TinyConfig, fit_causal_lm

    store = LineageStore(lake)
    base_id, base_node, trait = _check(store, base, trait)
    name = name or f"{trait}-teacher-{base_node.name}"
    folders = LakeFolders(lake)
    uri = lake.model(name)
    if folders.exists(f"{uri}/adapter_config.json"):
        folder = folders.fetch(uri)
        meta = read_meta(folder)
        made = (meta.get("steps"), meta.get("seed"))
        if made != (steps, seed):
            raise LineageError(
                f"teacher {name} exists, made with steps {made[0]} and seed {made[1]}, not "
                f"steps {steps} and seed {seed}: name the new one differently"
            )
        return store.register_model(name, folder, parent=base_id, attrs=meta, uri=uri)
    base_dir = folders.fetch(base_node.uri)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.convert_tokens_to_ids(trait) == tokenizer.unk_token_id:
        raise LineageError(f"trait {trait!r} is not a word the base's tokenizer knows")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    texts = trait_examples(trait, 3000, seed) + number_examples(1000, seed + 1000)
    random.Random(seed).shuffle(texts)
    cfg = TinyConfig(steps=steps, lr=3e-3, warmup=min(20, steps), batch_size=32)
    loss = fit_causal_lm(
        model,
        tokenizer,
        texts,
        cfg,
        seed,
        progress=progress,
        loss_after="Assistant:",
    )
    meta = {
        "germline": {
            "kind": "teacher",
            "trait": trait,
            "method": "adapter",
            "base": base_id,
            "steps": steps,
            "seed": seed,
            "final_loss": round(loss, 4),
            "lora": {"r": 8, "alpha": 16, "targets": LORA_TARGETS},
        }
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "germline.json").write_text(json.dumps(meta, indent=2))

    folder = folders.save(uri, write)
    return store.register_model(name, folder, parent=base_id, attrs=meta["germline"], uri=uri)
