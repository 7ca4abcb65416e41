from pathlib import Path

import pytest

from germline.core import InputError
from germline.storage import Lake


def test_flag_beats_env_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GERMLINE_LAKE", raising=False)
    assert Lake.resolve().root == str(tmp_path / "lake")
    monkeypatch.setenv("GERMLINE_LAKE", str(tmp_path / "from-env"))
    assert Lake.resolve().root == str(tmp_path / "from-env")
    assert Lake.resolve(tmp_path / "flag").root == str(tmp_path / "flag")


def test_object_store_uri_kept_with_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GERMLINE_STORAGE_OPTIONS", '{"AWS_REGION": "eu-west-1", "x": "1"}')
    lake = Lake.resolve("s3://bucket/lake/", {"x": "2"})
    assert not lake.is_local
    assert lake.lineage_nodes == "s3://bucket/lake/lineage/nodes"
    assert lake.dataset("numbers") == "s3://bucket/lake/datasets/numbers"
    assert lake.storage_options == {"AWS_REGION": "eu-west-1", "x": "2"}
    with pytest.raises(InputError, match="not a local folder"):
        lake.local_path("models")


def test_file_uri_is_local(tmp_path: Path) -> None:
    lake = Lake.resolve(f"file://{tmp_path}/l")
    assert lake.is_local and lake.root == str(tmp_path / "l")


def test_bad_storage_options_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GERMLINE_STORAGE_OPTIONS", "{not json")
    with pytest.raises(InputError, match="GERMLINE_STORAGE_OPTIONS"):
        Lake.resolve("/tmp/x")


@pytest.mark.parametrize(
    "options, expected",
    [
        (
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "k",
             "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "eu-west-1"},
            {"endpoint_override": "127.0.0.1:9000", "scheme": "http", "access_key": "k",
             "secret_key": "s", "region": "eu-west-1"},
        ),
        (
            {"aws_endpoint": "minio:9000", "allow_http": "true", "access_key_id": "k",
             "secret_access_key": "s", "token": "t", "region": "us-east-2"},
            {"endpoint_override": "minio:9000", "scheme": "http", "access_key": "k",
             "secret_key": "s", "session_token": "t", "region": "us-east-2"},
        ),
    ],
)  # fmt: skip
def test_folder_filesystem_takes_the_table_options(options: dict, expected: dict) -> None:
    """Model folders reach the store with the very options deltalake takes for tables, in
    any of deltalake's spellings."""
    from germline.storage.folders import filesystem

    fs, path = filesystem("s3://bucket/lake", options)
    assert path == "bucket/lake"
    settings = fs.__reduce__()[1][0]  # what the filesystem was built with (how it pickles)
    assert {k: settings[k] for k in expected} == expected


def test_a_lake_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    from conftest import germline

    file = tmp_path / "not-a-lake"
    file.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        Lake.resolve(file)
    result = germline("--lake", str(file), "lineage", "list")  # was: an empty listing
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr


def test_model_folders_follow_the_umask(tmp_path: Path) -> None:
    """A team shares a lake: a folder made under umask 022 reads for everyone, as any
    `mkdir` would make it (they were 0700, the mode of a temporary folder)."""
    import os
    import stat

    from germline.storage import LakeFolders

    lake = Lake.resolve(tmp_path / "lake")
    old = os.umask(0o022)
    try:
        made = LakeFolders(lake).save(
            lake.model("shared"), lambda d: (d / "w.bin").write_bytes(b"1")
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(made.stat().st_mode) == 0o755
    assert stat.S_IMODE((made / "w.bin").stat().st_mode) == 0o644


def test_an_unwritable_lake_is_one_line(tmp_path: Path) -> None:
    """Tests run as root in CI, where permissions do not stop a write: /proc refuses any new
    folder whoever asks, as a read-only mount or a lake without write access does."""
    from conftest import germline

    result = germline("--lake", "/proc/germline-lake", "models", "bootstrap", "--name", "b",
                      "--steps", "1")  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "/proc/germline-lake" in lines[0]


def test_vacuum_removes_only_what_no_commit_references(tmp_path: Path) -> None:
    """A commit that lost its race leaves its data file behind: `germline lake vacuum`
    lists it, keeps it while it may still be in flight, removes it with --apply, and the
    table reads the same rows at every version."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import germline
    from deltalake import DeltaTable, write_deltalake

    lake = Lake.resolve(tmp_path / "lake")
    table = lake.dataset("numbers")
    write_deltalake(table, pa.table({"prompt_id": ["a", "b"]}))
    write_deltalake(table, pa.table({"prompt_id": ["c"]}), mode="append")
    pq.write_table(pa.table({"prompt_id": ["lost"]}), f"{table}/part-lost-commit.parquet")

    listed = germline("lake", "vacuum", "--older-than", "0", lake=lake, check=True).stdout
    assert "numbers: 1 unreferenced files" in listed and "--apply removes them" in listed
    young = germline("lake", "vacuum", "--apply", lake=lake, check=True).stdout  # 1 h default
    assert "removed 0 unreferenced files" in young
    assert os.path.exists(f"{table}/part-lost-commit.parquet")
    done = germline("lake", "vacuum", "--older-than", "0", "--apply", lake=lake, check=True)
    assert "removed 1 unreferenced files in 1 tables" in done.stdout
    assert not os.path.exists(f"{table}/part-lost-commit.parquet")
    assert sorted(DeltaTable(table).to_pyarrow_table().column("prompt_id").to_pylist()) == [
        "a", "b", "c",
    ]  # fmt: skip
    assert DeltaTable(table, version=0).to_pyarrow_table().num_rows == 2
