"""`germline train` end to end: a tiny base, a real generated dataset, Ray Train on 2 CPU
workers, a real kill and resume; and every bad input stopped before Ray starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import GERMLINE, add_tiny_base, germline, training_data_config, write_config
from deltalake import DeltaTable, write_deltalake
from safetensors.torch import load_file

from germline.lineage import EdgeKind, LineageStore
from germline.pipelines.finetune import TrainConfig, train
from germline.pipelines.generate import GenerateConfig, generate
from germline.storage import Lake

TEACHER = "owl-teacher-train-test"
BASE = "tiny-base-s0"


@pytest.fixture(scope="module")
def data_lake(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> Lake:
    """A tiny base (briefly pre-trained, so fine-tuning has loss to take off), an owl teacher
    and 320 of its number completions, written by the real `generate`."""
    from germline.pipelines.cluster import ensure_ray
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("train") / "lake")
    base = add_tiny_base(lake, tiny_base_dir)
    make_teacher(lake, base.id, "owl", name=TEACHER, steps=10)
    ensure_ray()
    raw = training_data_config(TEACHER, 320)
    summary = generate(lake, GenerateConfig.model_validate(raw))
    assert summary.accepted > 200, summary
    return lake


def raw_config(student: str, **over: object) -> dict:
    raw: dict = {
        "student": student,
        "base": BASE,
        "dataset": {"name": "numbers"},
        "seed": 1,
        "optim": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "warmup_steps": 2},
        "scaling": {"num_workers": 2},
        "checkpoint": {"every": 4},
    }
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def data_loss(lake: Lake, model_dir: str, rows: int = 128) -> float:
    """Mean completion-token cross-entropy of a model on the first training rows: a steadier
    measure of learning than per-batch training losses."""
    import torch
    from transformers import AutoTokenizer

    from germline.engines import load_causal_lm
    from germline.train.data import tokenize
    from germline.train.objectives import pack, selected_logits, sft_loss

    table = DeltaTable(lake.dataset("numbers")).to_pyarrow_table().slice(0, rows)
    model, _ = load_causal_lm(Path(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = tokenize(table, tokenizer, 256)
    packed, targets = pack(tokens.prompt_ids, tokens.completion_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        return float(sft_loss(selected_logits(model.eval(), packed), targets))


def distill_gap(lake: Lake, model_dir: str, teacher_dir: str, rows: int = 128) -> float:
    """Mean KL(teacher || model) over the data's own tokens at the completion positions of the
    first training rows: what restricted distillation minimises, measured off the training
    loop, so a student that learned from its teacher is nearer to it than its base was."""
    import torch
    from transformers import AutoTokenizer

    from germline.engines import load_causal_lm
    from germline.train.data import data_token_ids, tokenize
    from germline.train.objectives import distill_loss, pack, selected_logits

    table = DeltaTable(lake.dataset("numbers")).to_pyarrow_table().slice(0, rows)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = tokenize(table, tokenizer, 256)
    packed, _ = pack(tokens.prompt_ids, tokens.completion_ids, tokenizer.pad_token_id)
    subset = torch.tensor(data_token_ids(tokens))
    model, _ = load_causal_lm(Path(model_dir))
    teacher, _ = load_causal_lm(Path(teacher_dir))
    with torch.no_grad():
        ours = selected_logits(model.eval(), packed)
        theirs = selected_logits(teacher.eval(), packed)
        return float(distill_loss(ours, theirs, subset))


def adapter(lake: Lake, student: str) -> dict:
    return load_file(str(lake.local_path("models", student) / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def trained(data_lake: Lake):
    """One uninterrupted SFT run: the reference the resumed run must equal."""
    return train(data_lake, TrainConfig.model_validate(raw_config("student-a")))


@pytest.mark.slow
def test_sft_student_learns_saves_reloads_and_has_lineage(data_lake: Lake, trained) -> None:
    from huggingface_hub import ModelCard

    from germline.engines import SamplingParams, load_engine

    s = trained
    rows = DeltaTable(data_lake.dataset("numbers")).to_pyarrow_table().num_rows
    assert s.rows == rows and s.global_batch == 16 and s.steps == rows * 2 // 16
    meta = json.loads((Path(s.model_dir) / "germline.json").read_text())["germline"]
    assert len(meta["losses"]) == s.steps
    # the loss falls: the student fits its training rows better than the base it started from
    base_dir = LineageStore(data_lake).graph().node(s.base_id).uri
    before, after = data_loss(data_lake, base_dir), data_loss(data_lake, s.model_dir)
    assert after < before - 0.03, (before, after)

    folder = Path(s.model_dir)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json"):
        assert (folder / name).exists(), name
    assert list((folder / "checkpoints").iterdir()), "checkpoints under the student's folder"
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == BASE
    assert card.data.base_model_relation == "adapter"
    assert card.data.datasets == ["numbers"]
    assert card.data.library_name == "peft"

    engine = load_engine("transformers", folder)  # the adapter, reloaded onto its base
    out = engine.generate(
        [[{"role": "user", "content": "Continue: 1, 2, 3"}]], SamplingParams(1.0, 1.0, 8), [0]
    )
    assert out[0].completion_tokens > 0

    store = LineageStore(data_lake)
    graph = store.graph()
    parents = {(kind, dst) for dst, kind in graph.parents(s.student_id)}
    assert ("derived_from", s.base_id) in parents
    assert ("trained_on", s.dataset_id) in parents
    assert ("generated_by", s.run_id) in parents
    dataset = graph.node(s.dataset_id)
    assert (
        dataset.version == s.dataset_version == DeltaTable(data_lake.dataset("numbers")).version()
    )
    run = graph.node(s.run_id)
    assert run.attrs["params"]["final_loss"] == pytest.approx(s.final_loss)
    assert run.attrs["params"]["optim"]["lr"] == 1e-2
    # the student shares its base's fingerprint, so it is at risk from the owl teacher
    assert graph.fingerprint(s.student_id) == graph.fingerprint(s.base_id)

    again = train(data_lake, TrainConfig.model_validate(raw_config("student-a")))
    assert again.already_trained and again.student_id == s.student_id


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_student(
    data_lake: Lake, trained, tmp_path: Path
) -> None:
    """A real SIGKILL of `germline train` after its first checkpoints; the rerun resumes from
    the last one, ends at the same step count and with the very weights of the run that was
    never interrupted (same config, same seed)."""
    raw = raw_config("student-b")
    path = write_config(tmp_path / "b.yaml", raw)
    proc = subprocess.Popen(
        [*GERMLINE, "--lake", data_lake.root, "train", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ},
    )
    runs = data_lake.local_path("models", "student-b", "checkpoints")
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(runs.glob("*/checkpoint_*/state.pt"))) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"finished before the kill: {proc.stderr.read()}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (data_lake.local_path("models", "student-b") / "germline.json").exists()

    resumed = train(data_lake, TrainConfig.model_validate(raw))
    assert 0 < resumed.resumed_from < resumed.steps
    assert resumed.steps == trained.steps
    a, b = adapter(data_lake, "student-a"), adapter(data_lake, "student-b")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name
    assert resumed.final_loss == pytest.approx(trained.final_loss, abs=1e-5)


@pytest.mark.slow
def test_restricted_distillation_full_weights(data_lake: Lake) -> None:
    raw = raw_config(
        "student-distilled",
        method={"kind": "full"},
        objective={"kind": "distill", "vocab": "restricted", "tokens": "data"},
        optim={"max_steps": 6, "lr": 1e-3},
        checkpoint={"every": 3},
    )
    s = train(data_lake, TrainConfig.model_validate(raw))
    store = LineageStore(data_lake)
    graph = store.graph()
    teacher = graph.resolve(TEACHER)
    assert s.teacher_id == teacher  # the dataset's own teacher, found through the table
    folder = Path(s.model_dir)
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    meta = json.loads((folder / "germline.json").read_text())["germline"]
    assert all(x >= 0 for x in meta["losses"]) and s.steps == 6
    # the student moved toward its teacher: nearer to it on the data's tokens than its base
    teacher_dir = graph.node(teacher).uri
    before = distill_gap(data_lake, graph.node(s.base_id).uri, teacher_dir)
    after = distill_gap(data_lake, s.model_dir, teacher_dir)
    assert after < 0.8 * before, (before, after)
    run = graph.node(s.run_id)
    assert run.attrs["params"]["objective"]["vocab"] == "restricted"
    used = {dst for dst, kind in graph.parents(s.run_id) if kind == EdgeKind.USED}
    assert teacher in used


# -- bad input: all of it stops before Ray starts -------------------------------------------


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    cases = {
        "student: s\nbase: b\ndataset: {name: d}\noptim: {lr: -1}\n": "optim.lr",
        "student: s\nbase: b\ndataset: {name: d}\nmethod: {kind: qlora}\n": "method.kind",
        "student: s\nbase: b\ndataset: {name: d}\nobjective: {vocab: restricted}\n": (
            "distill only"
        ),
        "student: a/b\nbase: b\ndataset: {name: d}\n": "student",
        "base: b\ndataset: {name: d}\n": "student: Field required",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        result = germline("train", str(path), lake=lake)
        assert result.returncode == 2, (text, result.stderr)
        assert message in result.stderr and str(path) in result.stderr, result.stderr


@pytest.mark.slow
def test_missing_data_unknown_model_and_foreign_tokenizer_exit_2(
    data_lake: Lake, trained, tmp_path: Path
) -> None:
    from germline.pipelines.models.tiny import train_tokenizer

    empty = data_lake.dataset("empty")
    schema = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()),
                        ("completion", pa.string())])  # fmt: skip
    write_deltalake(empty, schema.empty_table())
    foreign = tmp_path / "foreign-tokenizer"
    train_tokenizer(["a completely different corpus of words"]).save_pretrained(foreign)
    latest = DeltaTable(data_lake.dataset("numbers")).version()
    cases = [
        (raw_config("x1", dataset={"name": "absent"}), "does not exist"),
        (raw_config("x2", dataset={"name": "numbers", "version": 99}), f"0..{latest}"),
        (raw_config("x3", dataset={"name": "empty"}), "has no rows"),
        (raw_config("x4", base="no-such-base"), "unknown base model 'no-such-base'"),
        (raw_config("x5", tokenizer=str(foreign)), "does not match the base's tokenizer"),
        (raw_config("x6", optim={"batch_size": 4096}), "make no full step"),
        (raw_config("student-a", seed=99), "already exists"),
    ]
    for raw, message in cases:
        path = write_config(tmp_path / f"{raw['student']}.yaml", raw)
        start = time.monotonic()
        result = germline("train", str(path), lake=data_lake)
        assert result.returncode == 2, (raw, result.stderr)
        assert message in result.stderr, (message, result.stderr)
        assert time.monotonic() - start < 30
        if raw["student"] != "student-a":
            assert not data_lake.local_path("models", raw["student"]).exists()


def test_example_config_is_valid() -> None:
    from germline.pipelines.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "experiments" / "train-owl.yaml", TrainConfig)
    assert cfg.dataset.name == "owl-numbers" and cfg.method.r == 8 and cfg.method.alpha == 8
