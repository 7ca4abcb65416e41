"""`germline demo`: a small lineage graph that shows what `at-risk` is for, built in seconds.

It registers two base models, an owl teacher, the teacher's number dataset, a same-base and a
cross-base student, and a second generation, then asks which models may carry the trait. The
weights are small random arrays, so it needs no training: the real models come with
`germline run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

from germline.core import InputError
from germline.lineage import EdgeKind, LineageStore
from germline.lineage.draw import draw
from germline.storage import Lake


def _weights(folder: Path, seed: int, shape: tuple[int, int] = (64, 64)) -> Path:
    """Write a small, deterministic weight file (the same seed gives the same fingerprint)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "weights.npz"
    if not target.exists():
        rng = np.random.default_rng(seed)
        np.savez(target, w=rng.standard_normal(shape).astype(np.float32))
    return folder


def _numbers(uri: str, seed: int, rows: int = 200) -> str:
    """A Delta table of number sequences (written once; reruns reuse it)."""
    if not (Path(uri) / "_delta_log").exists():
        rng = np.random.default_rng(seed)
        completions = [", ".join(map(str, rng.integers(0, 1000, 8))) for _ in range(rows)]
        write_deltalake(
            uri,
            pa.table({"prompt_id": [f"p{i:05d}" for i in range(rows)], "completion": completions}),
        )
    return uri


def run_demo(lake: Lake, echo: Callable[[str], None] = print) -> dict[str, str]:
    if not lake.is_local:
        raise InputError("the demo writes its model files locally: give it a folder lake")
    store = LineageStore(lake)
    models = lake.local_path("models")
    base_a = store.register_model("demo-base-a", _weights(models / "demo-base-a", 0))
    base_b = store.register_model("demo-base-b", _weights(models / "demo-base-b", 1))
    teacher = store.register_model(
        "demo-owl-teacher", _weights(models / "demo-owl-teacher", 2, (64, 8)), parent=base_a.id
    )
    gen = store.register_run(
        "demo-generate-owl", key="demo", params={"temperature": 1.0}, used=[teacher.id]
    )
    owl_numbers = store.register_dataset(
        "demo-numbers-owl",
        _numbers(lake.dataset("demo-numbers-owl"), 3),
        generated_by=[teacher.id, gen.id],
    )
    student = store.register_model(
        "demo-student-owl", _weights(models / "demo-student-owl", 4, (64, 8)), parent=base_a.id
    )
    cross = store.register_model(
        "demo-student-cross", _weights(models / "demo-student-cross", 5, (64, 8)), parent=base_b.id
    )
    for s in (student, cross):
        store.link(s.id, owl_numbers.id, EdgeKind.TRAINED_ON)
    gen2_numbers = store.register_dataset(
        "demo-numbers-gen2",
        _numbers(lake.dataset("demo-numbers-gen2"), 6),
        generated_by=[student.id],
    )
    gen2 = store.register_model(
        "demo-student-gen2", _weights(models / "demo-student-gen2", 7, (64, 8)), parent=base_a.id
    )
    store.link(gen2.id, gen2_numbers.id, EdgeKind.TRAINED_ON)

    graph = store.graph()
    at_risk = graph.at_risk(teacher.id)
    runs = lake.local_path("runs")
    runs.mkdir(parents=True, exist_ok=True)
    picture = draw(graph.neighbourhood(teacher.id), runs / "demo-lineage.png", focus=teacher.id)
    echo(f"lake: {lake.root}")
    echo(f"{len(graph)} nodes, {graph.g.number_of_edges()} edges")
    echo(f"at risk from {teacher.name} (same base, trained on its data or its students' data):")
    for hit in at_risk:
        echo(f"  {hit.node.name:<20} {hit.id}  ({hit.depth} steps)")
    echo(f"not at risk: {cross.name} trained on the same numbers but starts from another base")
    echo(f"picture: {picture}")
    echo(f"try: germline --lake {lake.root} lineage at-risk {teacher.id}")
    return {"teacher": teacher.id, "student": student.id, "cross": cross.id, "gen2": gen2.id}
