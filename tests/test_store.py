"""Registering and linking: ids, idempotency, and every kind of bad input."""

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from germline.lineage import EdgeKind, LineageError, LineageStore, NodeKind
from germline.storage import Lake


def table_versions(store: LineageStore) -> tuple[int | None, int | None]:
    out = []
    for t in (store.nodes_table, store.edges_table):
        dt = t.open()
        out.append(None if dt is None else dt.version())
    return out[0], out[1]


def test_register_model_is_idempotent(store: LineageStore, model_dir: Callable) -> None:
    path = model_dir("base", 0)
    first = store.register_model("base", path)
    again = store.register_model("base", path)
    assert first.id == again.id
    assert first.id.startswith("model:base@")
    assert store.nodes_table.read().num_rows == 1
    # New weights under the same name are a new node; the name then resolves to neither.
    other = store.register_model("base", model_dir("base-v2", 1))
    assert other.id != first.id
    with pytest.raises(LineageError, match="ambiguous"):
        store.resolve("base")


def test_derived_model_inherits_fingerprint(store: LineageStore, model_dir: Callable) -> None:
    base = store.register_model("base", model_dir("base", 0))
    teacher = store.register_model("teacher", model_dir("teacher", 1), parent="base")
    student = store.register_model("student", model_dir("student", 2), parent=teacher.id)
    other = store.register_model("other", model_dir("other", 3))
    g = store.graph()
    assert g.fingerprint(student.id) == g.fingerprint(teacher.id) == base.weights_hash
    assert g.fingerprint(other.id) == other.weights_hash != base.weights_hash
    assert g.parents(student.id) == [(teacher.id, "derived_from")]


def test_fingerprint_follows_a_later_derived_from_link(
    store: LineageStore, model_dir: Callable
) -> None:
    base = store.register_model("base", model_dir("base", 0))
    adapter = store.register_model("adapter", model_dir("adapter", 1))
    store.link("adapter", "base", "derived_from")
    assert store.graph().fingerprint(adapter.id) == base.weights_hash


def test_register_dataset_versions(
    store: LineageStore, delta_table: Callable, model_dir: Callable
) -> None:
    teacher = store.register_model("teacher", model_dir("t", 0))
    uri = delta_table("numbers", versions=3)
    latest = store.register_dataset("numbers", uri, generated_by=[teacher.id])
    pinned = store.register_dataset("numbers", uri, version=1)
    assert latest.version == 2 and pinned.version == 1 and latest.id != pinned.id
    assert latest.attrs["rows"] == 15 and pinned.attrs["rows"] == 10
    assert store.register_dataset("numbers", uri).id == latest.id
    g = store.graph()
    assert g.parents(latest.id) == [(teacher.id, "generated_by")]
    assert [n.version for n in g.nodes(NodeKind.DATASET)] == [1, 2] or [
        n.version for n in g.nodes(NodeKind.DATASET)
    ] == [2, 1]


def test_register_run_with_key_is_idempotent(store: LineageStore, model_dir: Callable) -> None:
    m = store.register_model("m", model_dir("m", 0))
    run = store.register_run("generate", key="exp-1", params={"temperature": 1.0}, used=[m.id])
    assert store.register_run("generate", key="exp-1", used=[m.id]).id == run.id
    assert store.register_run("generate").id != store.register_run("generate").id
    g = store.graph()
    assert g.node(run.id).attrs["params"] == {"temperature": 1.0}
    assert g.parents(run.id) == [(m.id, "used")]


def test_link_is_idempotent(
    store: LineageStore, model_dir: Callable, delta_table: Callable
) -> None:
    m = store.register_model("m", model_dir("m", 0))
    d = store.register_dataset("d", delta_table("d"))
    store.link(m.id, d.id, EdgeKind.TRAINED_ON)
    store.link("m", "d", "trained_on")
    assert store.edges_table.read().num_rows == 1


# -- bad input: a clear error, and nothing written -------------------------------------------


@pytest.fixture
def populated(store: LineageStore, model_dir: Callable, delta_table: Callable) -> dict[str, str]:
    a = store.register_model("a", model_dir("a", 0))
    b = store.register_model("b", model_dir("b", 1), parent=a.id)
    c = store.register_model("c", model_dir("c", 2), parent=b.id)
    d = store.register_dataset("d", delta_table("d"), generated_by=[c.id])
    return {"a": a.id, "b": b.id, "c": c.id, "d": d.id}


@pytest.mark.parametrize(
    ("src", "dst", "kind", "message"),
    [
        ("c", "nope", "trained_on", "unknown node 'nope'"),
        ("model:zzz@123", "d", "trained_on", "unknown node"),
        ("a", "c", "derived_from", "cycle"),
        ("a", "a", "derived_from", "cycle"),
        ("c", "a", "derived_from", "already derives from"),
        ("a", "d", "derived_from", "cannot join a model to a dataset"),
        ("d", "a", "trained_on", "cannot join a dataset to a model"),
        ("a", "d", "trained_on", "cycle"),
    ],
)
def test_bad_links_write_nothing(
    store: LineageStore, populated: dict[str, str], src: str, dst: str, kind: str, message: str
) -> None:
    before = table_versions(store)
    with pytest.raises(LineageError, match=message):
        store.link(populated.get(src, src), populated.get(dst, dst), kind)
    assert table_versions(store) == before


def test_bad_registrations_write_nothing(
    store: LineageStore, populated: dict[str, str], tmp_path: Path, delta_table: Callable
) -> None:
    before = table_versions(store)
    (tmp_path / "empty").mkdir()
    cases = [
        (lambda: store.register_model("x", tmp_path / "empty"), "is not a model"),
        (lambda: store.register_model("x", tmp_path / "missing"), "does not exist"),
        (lambda: store.register_model("x", tmp_path / "empty", parent="nope"), "unknown node"),
        (lambda: store.register_model("bad name", tmp_path), "invalid name"),
        (lambda: store.register_dataset("x", str(tmp_path / "empty")), "not a Delta table"),
        (lambda: store.register_dataset("x", delta_table("v"), version=7), "version 7"),
        (
            lambda: store.register_dataset("x", delta_table("w"), generated_by=["nope"]),
            "unknown node",
        ),
        (
            lambda: store.register_dataset("x", delta_table("y"), generated_by=[populated["d"]]),
            "cannot join a dataset to a dataset",
        ),
        (lambda: store.register_run("r", used=["nope"]), "unknown node"),
    ]
    for call, message in cases:
        with pytest.raises(LineageError, match=message):
            call()
    assert table_versions(store) == before


def test_foreign_table_is_refused(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    write_deltalake(lake.lineage_nodes, pa.table({"id": ["x"], "other": [1]}))
    store = LineageStore(lake)
    with pytest.raises(LineageError, match="foreign Delta table"):
        store.graph()
    assert DeltaTable(lake.lineage_nodes).version() == 0


def test_corrupt_table_is_refused(tmp_path: Path, model_dir: Callable) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    Path(lake.lineage_edges).mkdir(parents=True)
    (Path(lake.lineage_edges) / "part-0.parquet").write_bytes(b"not a delta table")
    store = LineageStore(lake)
    with pytest.raises(LineageError, match="not a Delta table"):
        store.graph()
    log = Path(lake.lineage_nodes) / "_delta_log"
    store.register_model("m", model_dir("m", 0))
    (log / "00000000000000000000.json").write_text("{garbage")
    with pytest.raises(LineageError, match="cannot read"):
        store.graph()


def test_unwritable_lake(tmp_path: Path, model_dir: Callable) -> None:
    # A lake below a plain file cannot be created, even by root (which ignores chmod).
    (tmp_path / "plain-file").write_text("")
    store = LineageStore(Lake.resolve(tmp_path / "plain-file" / "lake"))
    with pytest.raises(LineageError, match="cannot write"):
        store.register_model("m", model_dir("m", 0))


def test_a_kept_snapshot_sees_every_writer(store: LineageStore, model_dir: Callable) -> None:
    """A store keeps its tables' latest snapshot and rows between calls (lineage/tables.py):
    what another store (another process) writes meanwhile must still be seen, and its own
    writes too, with and without another commit in between."""
    other = LineageStore(store.lake)
    a = store.register_model("a", model_dir("a", 0))
    assert other.resolve("a") == a.id  # other keeps a snapshot with a alone
    b = other.register_model("b", model_dir("b", 1))  # written past store's kept rows
    assert store.resolve("b") == b.id
    c = store.register_model("c", model_dir("c", 2), parent="b")  # on the refreshed snapshot
    assert other.graph().parents(c.id) == [(b.id, "derived_from")]
    assert store.graph().fingerprint(c.id) == b.weights_hash
    kept, fresh = (s.nodes_table.read().sort_by("id") for s in (store, LineageStore(store.lake)))
    assert kept.column("id").to_pylist() == sorted([a.id, b.id, c.id])
    assert kept.equals(fresh)  # the rows kept after its own commits are the rows read afresh
