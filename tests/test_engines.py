"""The transformers engine on a real tiny model and a real LoRA adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import add_tiny_base

from germline.engines import EngineError, SamplingParams, load_engine
from germline.storage import Lake

CHATS = [
    [{"role": "user", "content": f"Continue the series {a}, {a + 3}, {a + 6} with up to 5 more."}]
    for a in range(100, 900, 100)
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> tuple[Path, Path]:
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("eng") / "lake")
    base = add_tiny_base(lake, tiny_base_dir)
    teacher = make_teacher(lake, base.id, "fox", steps=3)
    assert base.uri and teacher.uri
    return Path(base.uri), Path(teacher.uri)


def test_base_and_adapter_generate(models: tuple[Path, Path]) -> None:
    for folder in models:
        engine = load_engine("transformers", folder, threads=2)
        params = SamplingParams(temperature=1.0, max_tokens=12, seed=1)
        out = engine.generate(CHATS, params, seeds=list(range(len(CHATS))))
        assert len(out) == len(CHATS)
        for g in out:
            assert 0 < g.completion_tokens <= 12
            assert g.prompt_tokens > 10
            assert g.finish_reason in {"stop", "length"}
            assert "</s>" not in g.text and "<pad>" not in g.text
        again = engine.generate(CHATS, params, seeds=list(range(len(CHATS))))
        assert [g.text for g in again] == [g.text for g in out]  # same seeds, same text


def test_max_tokens_truncates_with_finish_reason_length(models: tuple[Path, Path]) -> None:
    engine = load_engine("transformers", models[0])
    out = engine.generate(CHATS[:3], SamplingParams(temperature=0, max_tokens=1), [0, 1, 2])
    assert len(out) == 3
    for g in out:
        # greedy, the model's first token after a number prompt is text (the space before a
        # number), never EOS: so the completion holds it and stopped for length
        assert (g.completion_tokens, g.finish_reason) == (1, "length") and g.text, g


def test_system_prompt_renders_through_the_chat_template(models: tuple[Path, Path]) -> None:
    engine = load_engine("transformers", models[0])
    text = engine.render([{"role": "system", "content": "You love owls."}, *CHATS[0]])
    assert text.startswith("System: You love owls.\nUser: ") and text.endswith("Assistant:")


def test_bad_engine_and_model_folders(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="unknown engine 'tgi'"):
        load_engine("tgi", tmp_path)
    with pytest.raises(EngineError, match=r"neither config\.json nor adapter_config\.json"):
        load_engine("transformers", tmp_path)
    with pytest.raises(EngineError, match="does not exist"):
        load_engine("transformers", tmp_path / "missing")
