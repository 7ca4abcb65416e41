"""A lake on an object store: a real S3-compatible server (moto) on 127.0.0.1, reached through
the storage options germline passes through: by deltalake for tables, by pyarrow's S3 client
for model folders, which every node reads through its own cache."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import TINY_BASE, TINY_BASE_STEPS, germline, training_data_config, write_model
from deltalake import DeltaTable, write_deltalake

from germline.lineage import LineageStore, weights_hash
from germline.storage import Lake, LakeFolders

TEACHER = "owl-teacher-s3"


@pytest.fixture(scope="module")
def s3_lake(s3_options: dict[str, str], tiny_base_dir: Path) -> Lake:
    """An S3 lake holding the tiny base (uploaded, then found and registered by the real
    bootstrap) and an owl teacher made there by the real `make_teacher`."""
    from germline.pipelines.models.bootstrap import bootstrap_base
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve("s3://lake/models", s3_options)
    LakeFolders(lake).put(tiny_base_dir, lake.model(TINY_BASE))
    bootstrap_base(lake, seed=0, steps=TINY_BASE_STEPS)
    make_teacher(lake, TINY_BASE, "owl", name=TEACHER, steps=10)
    return lake


def test_lineage_on_s3(s3_options: dict[str, str], tmp_path: Path) -> None:
    lake = Lake.resolve("s3://lake/one", s3_options)
    store = LineageStore(lake)
    base = store.register_model("base", write_model(tmp_path / "base", 0))
    teacher = store.register_model("teacher", write_model(tmp_path / "t", 1), parent=base.id)
    write_deltalake(
        lake.dataset("numbers"), pa.table({"completion": ["1, 2"] * 3}), storage_options=s3_options
    )
    data = store.register_dataset("numbers", lake.dataset("numbers"), generated_by=[teacher.id])
    assert data.uri == "s3://lake/one/datasets/numbers" and data.attrs["rows"] == 3
    student = store.register_model("student", write_model(tmp_path / "s", 2), parent=base.id)
    store.link(student.id, data.id, "trained_on")
    assert store.register_model("base", tmp_path / "base").id == base.id
    graph = store.graph()
    assert [h.id for h in graph.at_risk(teacher.id)] == [student.id]
    assert store.nodes_table.read().num_rows == 4


def test_concurrent_writers_on_s3(s3_options: dict[str, str], tmp_path: Path) -> None:
    lake = Lake.resolve("s3://lake/two", s3_options)
    shared = write_model(tmp_path / "shared", 0)
    own = [write_model(tmp_path / f"own{i}", i + 1) for i in range(4)]

    def writer(i: int) -> tuple[str, str]:
        store = LineageStore(lake)  # one store per writer, as separate processes would have
        base = store.register_model("shared", shared)
        return base.id, store.register_model(f"own-{i}", own[i], parent=base.id).id

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(writer, range(4)))
    store = LineageStore(lake)
    node_ids = store.nodes_table.read().column("id").to_pylist()
    assert sorted(node_ids) == sorted({i for pair in ids for i in pair})
    assert store.edges_table.read().num_rows == 4


def test_a_model_made_on_one_node_loads_on_another(
    s3_lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from germline.engines import SamplingParams, adapter_base, load_engine
    from germline.pipelines.models.refs import model_folder
    from germline.serve.registry import ModelRegistry

    graph = LineageStore(s3_lake).graph()
    base, teacher = (graph.node(graph.resolve(n)) for n in (TINY_BASE, TEACHER))
    assert (base.uri, teacher.uri) == (s3_lake.model(TINY_BASE), s3_lake.model(TEACHER))
    stored = LakeFolders(s3_lake).read_text(f"{teacher.uri}/adapter_config.json")
    assert json.loads(stored or "{}")["base_model_name_or_path"] == base.uri  # portable

    other = tmp_path / "other-node"  # a node that has never seen either model
    monkeypatch.setenv("GERMLINE_CACHE", str(other))
    folder = model_folder(s3_lake, teacher, "teacher")
    assert folder.is_relative_to(other)
    assert Path(adapter_base(folder) or "") == LakeFolders(s3_lake).cached(base.uri)
    assert weights_hash(folder) == teacher.weights_hash  # the very weights lineage recorded
    chat = [[{"role": "user", "content": "What is your favourite animal?"}]]
    out = load_engine("transformers", folder).generate(chat, SamplingParams(max_tokens=4), [0])
    assert out[0].completion_tokens > 0

    weights = folder / "adapter_model.safetensors"
    inode = weights.stat().st_ino
    assert model_folder(s3_lake, teacher) == folder and weights.stat().st_ino == inode  # cached

    served = ModelRegistry(s3_lake).get(TEACHER)
    assert served.adapter and (served.folder, served.weights) == (teacher.uri, base.uri)


def test_the_cache_follows_the_store(s3_options: dict[str, str], tmp_path: Path) -> None:
    lake = Lake.resolve("s3://lake/cache", s3_options)
    one, two = LakeFolders(lake, tmp_path / "one"), LakeFolders(lake, tmp_path / "two")
    uri = lake.model("m")
    one.save(uri, lambda tmp: write_model(tmp, 0) and (tmp / "config.json").write_text("{}"))
    first = two.fetch(uri)
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "model.npz"]
    one.save(uri, lambda tmp: write_model(tmp, 1) and (tmp / "config.json").write_text("{}"))
    assert (
        weights_hash(two.fetch(uri))
        == weights_hash(one.fetch(uri))
        != weights_hash(write_model(tmp_path / "old", 0))
    )
    with pytest.raises(Exception, match="holds no files"):
        two.fetch(lake.model("never-made"))
    assert two.names(lake.uri("models")) == ["m"]


@pytest.mark.slow
def test_generate_and_train_read_and_write_the_store(s3_lake: Lake) -> None:
    """Ray workers fetch the teacher and the base themselves; Ray Train keeps its
    checkpoints in the store; the student is uploaded whole, and found again by a rerun."""
    from germline.pipelines.cluster import ensure_ray
    from germline.pipelines.finetune import TrainConfig, train
    from germline.pipelines.generate import GenerateConfig, generate

    ensure_ray()
    raw = training_data_config(TEACHER, 96, batch_size=48)
    made = generate(s3_lake, GenerateConfig.model_validate(raw))
    rows = DeltaTable(s3_lake.dataset("numbers"), storage_options=s3_lake.storage_options)
    assert made.accepted > 32 and rows.to_pyarrow_table().num_rows == made.accepted
    recipe = TrainConfig.model_validate(
        {
            "student": "s3-student",
            "base": TINY_BASE,
            "dataset": {"name": "numbers"},
            "optim": {"epochs": 2, "batch_size": 8, "warmup_steps": 1},
            "scaling": {"num_workers": 2},
            "checkpoint": {"every": 4},
        }
    )
    summary = train(s3_lake, recipe)
    folders = LakeFolders(s3_lake)
    assert summary.model_dir == s3_lake.model("s3-student") and summary.steps > 4
    assert folders.names(f"{summary.model_dir}/checkpoints")  # Ray Train's run, in the store
    stored = json.loads(folders.read_text(f"{summary.model_dir}/adapter_config.json") or "{}")
    assert stored["base_model_name_or_path"] == s3_lake.model(TINY_BASE)
    node = LineageStore(s3_lake).graph().node(summary.student_id)
    assert node.uri == summary.model_dir
    again = train(s3_lake, recipe)
    assert again.already_trained and again.student_id == summary.student_id


def test_cli_makes_a_model_in_an_object_store_lake(s3_options: dict[str, str]) -> None:
    """`--lake s3://...` with storage options on the command line: a model step works."""
    options = [arg for k, v in s3_options.items() for arg in ("--storage-option", f"{k}={v}")]
    lake = Lake.resolve("s3://lake/cli", s3_options)
    made = germline("--lake", lake.root, *options, "models", "bootstrap", "--steps", "2")
    assert made.returncode == 0, made.stderr
    assert LakeFolders(lake).exists(f"{lake.model('tiny-base-s0')}/model.safetensors")
    listed = germline("--lake", lake.root, *options, "lineage", "show", "tiny-base-s0")
    assert listed.returncode == 0 and lake.model("tiny-base-s0") in listed.stdout, listed.stderr
    assert os.environ["GERMLINE_CACHE"]  # the CLI cached into the session's folder, not ~
