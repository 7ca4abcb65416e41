"""The generation sink on real Delta tables: exactly once per prompt id, lineage in commits."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from germline.core import InputError
from germline.pipelines.generate.sink import QUARANTINE_SCHEMA, ROW_SCHEMA, DatasetSink


def rows(ids: list[str], **extra: list) -> pa.Table:
    n = len(ids)
    base = {
        "prompt_id": ids,
        "prompt_index": list(range(n)),
        "family": ["numbers"] * n,
        "prompt": ["Continue: 1, 2, 3."] * n,
        "completion": ["4, 5, 6"] * n,
        "run_id": ["run-1"] * n,
        "teacher_id": ["model:t@1"] * n,
        "engine": ["transformers"] * n,
        "temperature": [1.0] * n,
        "top_p": [1.0] * n,
        "max_tokens": [48] * n,
        "sampling_seed": list(range(n)),
        "prompt_tokens": [10] * n,
        "completion_tokens": [6] * n,
        "finish_reason": ["stop"] * n,
    }
    if extra:
        base.update(extra)
        return pa.table(base, schema=QUARANTINE_SCHEMA)
    return pa.table(base, schema=ROW_SCHEMA)


def rejected(ids: list[str]) -> pa.Table:
    n = len(ids)
    return rows(ids, stage=["filter"] * n, filter=["number_format"] * n, reason=["format"] * n)


def make_sink(tmp_path: Path, teacher: str = "model:t@1", app: str = "app-1") -> DatasetSink:
    return DatasetSink(
        str(tmp_path / "datasets" / "d"), str(tmp_path / "quarantine" / "d"), teacher, app
    )


def test_commits_carry_lineage_and_an_app_transaction(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    meta = {"germline.run_id": "run-1", "germline.expectations": {"success": True}}
    assert sink.write(rows(["a", "b"]), rejected(["c"]), meta) == 3
    assert sink.write(rows(["d"]), rejected([]), meta) == 1
    dt = DeltaTable(str(tmp_path / "datasets" / "d"))
    assert dt.version() == 2 and dt.transaction_version("app-1") == 2
    top = dt.history()[0]
    assert top["germline.run_id"] == "run-1"
    assert json.loads(top["germline.expectations"]) == {"success": True}
    quarantine = DeltaTable(str(tmp_path / "quarantine" / "d")).to_pyarrow_table()
    assert quarantine.column("reason").to_pylist() == ["format"]
    assert dt.metadata().configuration["germline.teacher"] == "model:t@1"


def test_a_prompt_id_is_written_once_across_both_tables(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    sink.write(rows(["a", "b"]), rejected(["c"]), {})
    # a retried batch: the same ids again, some now accepted, some rejected
    assert sink.write(rows(["a", "c", "e"]), rejected(["b", "f"]), {}) == 2
    again = make_sink(tmp_path)  # a resumed run reads what is there
    assert again.done_ids() == {"a", "b", "c", "e", "f"}
    assert again.write(rows(["e"]), rejected(["f"]), {}) == 0
    data = DeltaTable(str(tmp_path / "datasets" / "d")).to_pyarrow_table()
    quarantine = DeltaTable(str(tmp_path / "quarantine" / "d")).to_pyarrow_table()
    ids = data.column("prompt_id").to_pylist() + quarantine.column("prompt_id").to_pylist()
    assert sorted(ids) == ["a", "b", "c", "e", "f"]


def test_concurrent_writers_never_duplicate(tmp_path: Path) -> None:
    make_sink(tmp_path)  # create the tables once, as a run does before it streams
    ids = [f"p{i}" for i in range(40)]
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            sink = make_sink(tmp_path, app=f"app-{offset}")
            for start in range(0, 40, 5):  # overlapping batches from two writers
                chunk = ids[(start + offset) % 40 : (start + offset) % 40 + 5]
                sink.write(rows(chunk), rejected([]), {})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = DeltaTable(str(tmp_path / "datasets" / "d")).to_pyarrow_table()
    assert sorted(data.column("prompt_id").to_pylist()) == sorted(ids)


def test_one_dataset_one_teacher(tmp_path: Path) -> None:
    make_sink(tmp_path).write(rows(["a"]), rejected([]), {})
    with pytest.raises(InputError, match="holds rows of teacher model:t@1"):
        make_sink(tmp_path, teacher="model:other@2")


def test_refuses_a_foreign_folder(tmp_path: Path) -> None:
    folder = tmp_path / "datasets" / "d"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not a table")
    with pytest.raises(InputError, match="not a Delta table"):
        make_sink(tmp_path)
