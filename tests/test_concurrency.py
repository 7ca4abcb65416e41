"""Eight processes registering and linking into one lake at once lose and duplicate nothing."""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import write_model
from deltalake import DeltaTable, write_deltalake

from germline.lineage import LineageStore
from germline.storage import Lake

WORKERS = 8
STUDENTS = 4


def worker(root: str, w: int, start_at: float) -> list[str]:
    """What one process does: race the others for shared nodes and edges, add its own."""
    root_path = Path(root)
    store = LineageStore(Lake.resolve(root_path / "lake"))
    time.sleep(max(0.0, start_at - time.time()))
    base = store.register_model("base", root_path / "models" / "base")
    shared = store.register_dataset("shared", str(root_path / "shared"), generated_by=[base.id])
    run = store.register_run("shared-run", key="same", used=[base.id])
    made = [base.id, shared.id, run.id]
    for s in range(STUDENTS):
        folder = write_model(root_path / "models" / f"s{w}-{s}", seed=100 * w + s)
        student = store.register_model(f"student-{w}-{s}", folder, parent=base.id)
        store.link(student.id, shared.id, "trained_on")
        made.append(student.id)
    own = store.register_run(f"run-{w}", key=f"k{w}", used=[made[-1]])
    return [*made, own.id]


@pytest.mark.slow
def test_eight_writers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    write_model(tmp_path / "models" / "base", seed=0)
    write_deltalake(str(tmp_path / "shared"), pa.table({"completion": ["1, 2"]}))
    start_at = time.time() + 3.0  # all workers start writing at the same moment
    with ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(worker, str(tmp_path), w, start_at) for w in range(WORKERS)]
        results = [f.result(timeout=300) for f in futures]

    store = LineageStore(Lake.resolve(tmp_path / "lake"))
    nodes = store.nodes_table.read()
    edges = store.edges_table.read()
    expected_nodes = {i for r in results for i in r}
    # base + shared dataset + shared run + 8 x (4 students + own run)
    assert len(expected_nodes) == 3 + WORKERS * (STUDENTS + 1)
    assert sorted(nodes.column("id").to_pylist()) == sorted(expected_nodes)
    keys = pc.binary_join_element_wise(
        edges.column("src"), edges.column("dst"), edges.column("kind"), "|"
    ).to_pylist()
    assert len(keys) == len(set(keys)), "an edge was written twice"
    # dataset generated_by base, shared run used base, per student derived_from + trained_on,
    # per worker its run used a student
    assert len(keys) == 2 + WORKERS * (2 * STUDENTS + 1)
    graph = store.graph()
    base = results[0][0]
    students = [h.id for h in graph.at_risk(base)]
    assert len(students) == WORKERS * STUDENTS

    # A writer that lost a commit race left its data file behind; vacuum removes exactly
    # those (every file on disk is then one a commit references) and no row changes.
    from conftest import germline

    lake = Lake.resolve(tmp_path / "lake")
    germline("lake", "vacuum", "--older-than", "0", "--apply", lake=lake, check=True)
    for uri in (lake.lineage_nodes, lake.lineage_edges):
        on_disk = {p.name for p in Path(uri).glob("*.parquet")}
        referenced = {Path(f).name for f in DeltaTable(uri).file_uris()}
        assert on_disk == referenced
    assert sorted(store.nodes_table.read().column("id").to_pylist()) == sorted(expected_nodes)
    assert store.edges_table.read().num_rows == len(keys)
