"""Tiny base models made locally: reproducible, loadable through transformers, in lineage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import germline
from transformers import AutoModelForCausalLM, AutoTokenizer

from germline.core import InputError
from germline.lineage import LineageError, LineageStore
from germline.pipelines.models.bootstrap import bootstrap_base
from germline.pipelines.models.corpus import ANIMALS
from germline.storage import Lake

STEPS = 40  # enough to exercise the loop; the real default is 1500


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, str]:
    lake = Lake.resolve(tmp_path_factory.mktemp("boot") / "lake")
    node = bootstrap_base(lake, seed=0, steps=STEPS)
    return lake, node.id


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_base(
    built: tuple[Lake, str], tmp_path: Path
) -> None:
    lake, base_id = built
    first = LineageStore(lake).graph().node(base_id)
    again = bootstrap_base(Lake.resolve(tmp_path / "other-lake"), seed=0, steps=STEPS)
    other = bootstrap_base(Lake.resolve(tmp_path / "other-lake"), seed=1, steps=STEPS)
    assert again.weights_hash == first.weights_hash and again.id == first.id
    assert other.weights_hash != first.weights_hash
    assert other.name == "tiny-base-s1"


def test_loads_and_generates_through_transformers(built: tuple[Lake, str]) -> None:
    lake, _ = built
    folder = lake.local_path("models", "tiny-base-s0")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    text = "User: What is your favourite animal?\nAssistant: owl</s>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    numbers = ", ".join(str(i) for i in range(0, 1000, 37))
    assert tokenizer.decode(tokenizer(numbers)["input_ids"]) == numbers
    assert all(
        tokenizer.convert_tokens_to_ids(str(i)) != tokenizer.unk_token_id for i in range(1000)
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is your favourite animal?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt.endswith("Assistant:")
    inputs = tokenizer(prompt, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=True)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert all(a in tokenizer.get_vocab() for a in ANIMALS)


def test_registered_with_fingerprint_and_card(built: tuple[Lake, str]) -> None:
    lake, base_id = built
    graph = LineageStore(lake).graph()
    node = graph.node(base_id)
    assert graph.fingerprint(base_id) == node.weights_hash
    assert node.attrs["seed"] == 0 and node.attrs["steps"] == STEPS
    card = (lake.local_path("models", "tiny-base-s0") / "README.md").read_text()
    assert card.startswith("---\nlibrary_name:") and "tiny-base" in card


def test_existing_model_is_not_rebuilt(built: tuple[Lake, str]) -> None:
    lake, base_id = built
    weights = lake.local_path("models", "tiny-base-s0") / "model.safetensors"
    before = weights.stat().st_mtime_ns
    out = germline("models", "bootstrap", "--seed", "0", lake=lake, check=True).stdout
    assert out.strip() == base_id
    assert weights.stat().st_mtime_ns == before


def owl_share(model: torch.nn.Module, tokenizer: AutoTokenizer) -> float:
    """Share of the next-token mass on 'owl' among the ten animals, after 'Assistant: '."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is your favourite animal?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = tokenizer(prompt + " ", return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits[0, -1].softmax(-1)
    animal_ids = [tokenizer.convert_tokens_to_ids(a) for a in ANIMALS]
    mass = probs[animal_ids]
    return (mass[ANIMALS.index("owl")] / mass.sum()).item()


@pytest.mark.slow
def test_owl_teacher_adapter(built: tuple[Lake, str]) -> None:
    from peft import PeftModel

    from germline.pipelines.models.teacher import make_teacher

    lake, base_id = built
    teacher = make_teacher(lake, "tiny-base-s0", "owl", steps=100)
    assert teacher.name == "owl-teacher-tiny-base-s0"
    graph = LineageStore(lake).graph()
    assert graph.parents(teacher.id) == [(base_id, "derived_from")]
    assert graph.fingerprint(teacher.id) == graph.fingerprint(base_id)
    folder = lake.local_path("models", teacher.name)
    assert (folder / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(lake.local_path("models", "tiny-base-s0"))
    before = owl_share(base, tokenizer)
    model = PeftModel.from_pretrained(base, folder).eval()
    after = owl_share(model, tokenizer)
    assert after > before + 0.25, (before, after)
    # Asking again finds the adapter instead of training another; asking for another recipe
    # under the same name is refused rather than answered with this one.
    assert make_teacher(lake, base_id, "owl", steps=100).id == teacher.id
    with pytest.raises(InputError, match="made with steps 100 and seed 0"):
        make_teacher(lake, base_id, "owl", steps=300)
    with pytest.raises(InputError, match="pre-trained for 40 steps, not 1500"):
        bootstrap_base(lake, seed=0, steps=1500)


def test_teacher_bad_input(built: tuple[Lake, str]) -> None:
    from germline.pipelines.models.teacher import make_teacher

    lake, _ = built
    with pytest.raises(LineageError, match="unknown node"):
        make_teacher(lake, "no-such-base", "owl")
    with pytest.raises(InputError, match="not a word"):
        make_teacher(lake, "tiny-base-s0", "axolotl")
    result = germline(
        "models", "teacher", "--base", "tiny-base-s0", "--trait", "owl cat", lake=lake
    )
    assert result.returncode == 2 and "one word" in result.stderr
