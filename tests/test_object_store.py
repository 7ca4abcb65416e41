"""A lake on an object store: a real S3-compatible server (moto) on 127.0.0.1, reached by
deltalake through the storage options germline passes through."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from conftest import write_model
from deltalake import write_deltalake
from moto.server import ThreadedMotoServer

from germline.lineage import Lake, LineageStore


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, str]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket="lake")
    yield {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        # S3 has no atomic rename; conditional puts make Delta commits safe between writers.
        "conditional_put": "etag",
    }
    server.stop()


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


def test_model_steps_on_an_object_store_lake_say_what_to_do(s3_options: dict[str, str]) -> None:
    """Models and reports are folders, written on local or shared-filesystem lakes only for
    now: on an object-store lake a model step stops before any work, naming the way out."""
    from conftest import germline

    options = [arg for k, v in s3_options.items() for arg in ("--storage-option", f"{k}={v}")]
    ran = germline("--lake", "s3://lake/models-here", *options, "models", "bootstrap")
    assert ran.returncode == 2
    assert "mount one shared folder at the same path on every node" in ran.stderr
    assert ran.stderr.count("\n") == 1  # one line
    assert LineageStore(Lake.resolve("s3://lake/models-here", s3_options)).graph().nodes() == []
