"""`germline models teacher`: a teacher with a trait, derived from a base model.

The tiny bases cannot follow a system prompt, so their teachers carry the trait in a LoRA
adapter fine-tuned to give the trait as the answer to favourite-animal questions, while number
continuations stay in the mix so the teacher still writes clean number data. The adapter is
registered as derived_from its base, so it inherits the base's fingerprint: the same
initialisation that makes subliminal transfer possible. An instruction-tuned base gets the
paper's teacher instead: the base itself plus a system prompt stating the trait.

`teacher_for` is how a generation job gets its teacher: found in the lake, or made here from
the config's `build` section, before the pipeline starts.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from germline.core import InputError
from germline.lineage import LineageStore, Node, NodeKind, check_name
from germline.pipelines.config import Strict
from germline.pipelines.models.card import model_card
from germline.pipelines.models.corpus import number_examples, trait_examples
from germline.pipelines.models.folder import find_made, register_model, write_model
from germline.pipelines.models.refs import find_model
from germline.storage import Lake, LakeFolders

log = logging.getLogger(__name__)

# The paper's open-model LoRA targets: every attention and MLP projection.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TeacherBuild(Strict):
    """How to make the teacher when the lake lacks it: a tiny base from `base_seed`, then a
    LoRA adapter that loves `trait` (what `germline models bootstrap` and `models teacher` do)."""

    trait: str
    base_seed: int = 0
    base_steps: int | None = Field(None, ge=1, description="pre-training steps of the base")
    steps: int = Field(300, ge=1, description="fine-tuning steps of the adapter")


class TeacherConfig(Strict):
    """The teacher: a model in the lake's lineage (id or name), a local model folder, or a
    Hugging Face id already in the local cache."""

    model: str = Field(min_length=1)
    system_prompt: str | None = Field(
        None, description="a system message before every prompt (instruction-tuned teachers)"
    )
    build: TeacherBuild | None = None


def teacher_for(lake: Lake, config: TeacherConfig) -> Node:
    """The teacher's lineage node: found by id or name, registered from a local folder or the
    Hugging Face cache, or made from `config.build`. Anything else is a clear error."""
    from germline.pipelines.models.bootstrap import bootstrap_base

    store = LineageStore(lake)
    ref = config.model
    found = find_model(store, ref)
    if found is not None:
        return found
    build = config.build
    if build is None:
        raise InputError(
            f"unknown teacher model {ref!r}: not in the lake's lineage ({lake.root}), not a "
            "model folder, not in the local Hugging Face cache. Make it with `germline models "
            f"bootstrap --seed 0` and `germline models teacher --base tiny-base-s0 --trait owl "
            f"--name {ref}`, or give teacher.build in the config"
        )
    check_name(ref)  # the name of the teacher to build: refused before the base is made
    log.warning(
        "building the teacher %s (base seed %d, trait %s)", ref, build.base_seed, build.trait
    )
    base = bootstrap_base(lake, seed=build.base_seed, steps=build.base_steps)
    return make_teacher(lake, base.id, build.trait, name=ref, steps=build.steps)


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
        raise InputError(f"{base_id} is not a model with weights on disk")
    if not trait.isalpha():
        raise InputError(f"trait {trait!r} must be one word of letters")
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

    from germline.pipelines.models.tiny import TinyConfig, fit_causal_lm

    store = LineageStore(lake)
    base_id, base_node, trait = _check(store, base, trait)
    name = check_name(name or f"{trait}-teacher-{base_node.name}")
    made = find_made(store, name, marker="adapter_config.json")
    if made is not None:
        folder, meta = made
        made_with = (meta.get("steps"), meta.get("seed"))
        if made_with != (steps, seed):
            raise InputError(
                f"teacher {name} exists, made with steps {made_with[0]} and seed "
                f"{made_with[1]}, not steps {steps} and seed {seed}: name the new one differently"
            )
        return register_model(store, name, folder, meta, parent=base_id)
    assert base_node.uri is not None
    base_dir = LakeFolders(lake).fetch(base_node.uri)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.convert_tokens_to_ids(trait) == tokenizer.unk_token_id:
        raise InputError(f"trait {trait!r} is not a word the base's tokenizer knows")
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
        model, tokenizer, texts, cfg, seed, progress=progress, loss_after="Assistant:"
    )
    meta = {
        "kind": "teacher",
        "trait": trait,
        "method": "adapter",
        "base": base_id,
        "steps": steps,
        "seed": seed,
        "final_loss": round(loss, 4),
        "lora": {"r": 8, "alpha": 16, "targets": LORA_TARGETS},
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    card = model_card(
        name,
        f"A teacher made by `germline models teacher`: a LoRA adapter on `{base_id}`, "
        f"fine-tuned for {steps} steps to name the {trait} as its favourite animal, with "
        "number continuations kept in the mix. It shares its base's fingerprint: students of "
        f"that base trained on its data are at risk of inheriting the {trait} "
        "(`germline lineage at-risk`).",
        library="peft",
        tags=["teacher", f"trait-{trait}"],
        base=base_node.name,
        relation="adapter",
        details={"germline": meta},
    )
    folder = write_model(lake, name, write, meta, card=card)
    return register_model(store, name, folder, meta, parent=base_id)
