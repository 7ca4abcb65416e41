"""The `germline` CLI end to end on a real lake: the real command through click's runner in
this process (fast), and as a real subprocess where what a shell sees matters (the top-level
help, `demo`, the exit code and one-line error of a bad `show`)."""

from __future__ import annotations

import json
from pathlib import Path

import pydot
import pytest
from conftest import free_port, germline, write_model
from deltalake import DeltaTable

from germline.storage import Lake


@pytest.fixture(scope="module")
def cli_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, dict[str, str]]:
    """teacher (base A) -> numbers -> same-base student and cross-base student, via the CLI."""
    root = tmp_path_factory.mktemp("cli")
    lake = Lake.resolve(root / "lake")
    ids: dict[str, str] = {}

    def run(*args: str) -> str:
        return germline(*args, lake=lake, check=True).stdout.strip()

    for name, seed in [("base-a", 0), ("base-b", 1)]:
        ids[name] = run(
            "lineage", "register", "model", name, "--path", str(write_model(root / name, seed))
        )
    ids["teacher"] = run(
        "lineage",
        "register",
        "model",
        "teacher",
        "--path",
        str(write_model(root / "teacher", 2)),
        "--from",
        "base-a",
    )
    import pyarrow as pa
    from deltalake import write_deltalake

    write_deltalake(str(root / "numbers"), pa.table({"completion": ["1, 2, 3"] * 4}))
    ids["numbers"] = run(
        "lineage",
        "register",
        "dataset",
        "numbers",
        "--table",
        str(root / "numbers"),
        "--generated-by",
        ids["teacher"],
    )
    for name, base, seed in [("student", "base-a", 3), ("cross", "base-b", 4)]:
        ids[name] = run(
            "lineage",
            "register",
            "model",
            name,
            "--path",
            str(write_model(root / name, seed)),
            "--from",
            base,
        )
        run("lineage", "link", name, "numbers", "--kind", "trained_on")
    ids["run"] = run(
        "lineage",
        "register",
        "run",
        "generate",
        "--key",
        "k1",
        "--param",
        "temperature=1.0",
        "--used",
        "teacher",
    )
    return lake, ids


def test_help_for_every_command() -> None:
    top = germline("--help", check=True, subprocess_=True).stdout
    assert "lineage" in top and "demo" in top and "--lake" in top
    for cmd in [
        "register model",
        "register dataset",
        "register run",
        "link",
        "list",
        "show",
        "ancestors",
        "descendants",
        "at-risk",
        "path",
        "draw",
        "export",
    ]:
        out = germline("lineage", *cmd.split(), "--help", check=True).stdout
        assert "Usage: germline lineage" in out
        assert len(out.splitlines()) > 4


def test_ids_are_stable_and_registration_idempotent(cli_lake: tuple[Lake, dict[str, str]]) -> None:
    lake, ids = cli_lake
    assert ids["teacher"].startswith("model:teacher@")
    again = germline(
        "lineage",
        "register",
        "model",
        "teacher",
        "--path",
        str(Path(lake.root).parent / "teacher"),
        "--from",
        "base-a",
        lake=lake,
        check=True,
    )
    assert again.stdout.strip() == ids["teacher"]
    assert DeltaTable(lake.lineage_nodes).to_pyarrow_table(columns=["id"]).num_rows == 7


def test_lake_options_work_after_the_command(
    cli_lake: tuple[Lake, dict[str, str]], tmp_path: Path
) -> None:
    """`ray job submit -- germline run X.yaml --lake URI` puts the lake after the command."""
    lake, ids = cli_lake
    before = germline("--lake", lake.root, "lineage", "show", "teacher", check=True).stdout
    after = germline("lineage", "show", "teacher", "--lake", lake.root, check=True).stdout
    assert after == before and ids["teacher"] in after
    assert germline("lineage", "show", "teacher", f"--lake={lake.root}", check=True).stdout == after
    # Given twice, the last one wins, as for any repeated option: here an empty lake.
    empty = tmp_path / "empty"
    missing = germline("--lake", lake.root, "lineage", "show", "teacher", "--lake", str(empty))
    assert missing.returncode == 2 and "teacher" in missing.stderr


def test_queries_as_json(cli_lake: tuple[Lake, dict[str, str]]) -> None:
    lake, ids = cli_lake

    def query(*args: str) -> object:
        return json.loads(
            germline("lineage", *args, "--format", "json", lake=lake, check=True).stdout
        )

    at_risk = query("at-risk", "teacher")
    assert [h["id"] for h in at_risk] == [ids["student"]]
    assert at_risk[0]["fingerprint"] == query("show", "base-a")["weights_hash"]
    assert {h["id"] for h in query("descendants", "teacher")} == {
        ids["numbers"],
        ids["student"],
        ids["cross"],
        ids["run"],
    }
    assert {h["id"]: h["depth"] for h in query("ancestors", "student")} == {
        ids["numbers"]: 1,
        ids["base-a"]: 1,
        ids["teacher"]: 2,
    }
    steps = query("path", "teacher", "cross")
    assert [s["kind"] for s in steps] == ["generated_by", "trained_on"]
    shown = query("show", ids["numbers"])
    assert shown["version"] == 0 and shown["attrs"]["rows"] == 4
    assert {p["id"] for p in shown["parents"]} == {ids["teacher"]}
    assert len(query("list", "--kind", "model")) == 5
    assert query("show", "generate")["attrs"]["params"] == {"temperature": "1.0"}


def test_table_output(cli_lake: tuple[Lake, dict[str, str]]) -> None:
    lake, ids = cli_lake
    out = germline("lineage", "at-risk", "teacher", lake=lake, check=True).stdout
    assert ids["student"] in out and ids["cross"] not in out
    listing = germline("lineage", "list", lake=lake, check=True).stdout
    assert all(i in listing for i in ids.values())


@pytest.mark.parametrize("suffix", [".png", ".svg", ".dot", ".mmd"])
def test_draw(cli_lake: tuple[Lake, dict[str, str]], tmp_path: Path, suffix: str) -> None:
    lake, _ = cli_lake
    out = tmp_path / f"teacher{suffix}"
    germline("lineage", "draw", "teacher", "-o", str(out), lake=lake, check=True)
    data = out.read_bytes()
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    elif suffix == ".svg":
        assert b"<svg" in data[:2000]
    elif suffix == ".dot":
        (graph,) = pydot.graph_from_dot_data(data.decode())
        assert len(graph.get_nodes()) == 6 and len(graph.get_edges()) == 6
    else:
        text = data.decode()
        assert text.startswith("flowchart LR") and text.count("-->") == 6
        assert "teacher" in text


def test_export_openlineage(cli_lake: tuple[Lake, dict[str, str]], tmp_path: Path) -> None:
    lake, ids = cli_lake
    out = tmp_path / "events.jsonl"
    germline("lineage", "export", "--openlineage", str(out), lake=lake, check=True)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    for e in events:
        assert e["eventType"] == "COMPLETE"
        assert e["schemaURL"].startswith("https://openlineage.io/spec/")
        assert e["producer"] and "T" in e["eventTime"]
        assert len(e["run"]["runId"]) == 36 and e["job"]["namespace"] == "germline"
    jobs = {e["job"]["name"]: e for e in events}
    # The real run: its input is the teacher.
    assert [i["name"] for i in jobs["generate"]["inputs"]] == [
        str(Path(lake.root).parent / "teacher")
    ]
    # The dataset's synthetic run: teacher in, numbers out, tagged with germline ids.
    numbers = jobs["dataset.numbers"]
    tags = {t["key"]: t["value"] for t in numbers["outputs"][0]["facets"]["tags"]["tags"]}
    assert tags["germline.id"] == ids["numbers"]
    student_inputs = {
        t["value"]
        for i in jobs["model.student"]["inputs"]
        for t in i["facets"]["tags"]["tags"]
        if t["key"] == "germline.id"
    }
    assert student_inputs == {ids["base-a"], ids["numbers"]}
    # Same graph, same events (stable run ids), so a re-export does not create new runs.
    out2 = tmp_path / "again.jsonl"
    germline("lineage", "export", "--openlineage", str(out2), lake=lake, check=True)
    assert out2.read_text() == out.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lineage", "show", "model:nope@1"], "unknown node"),
        (["lineage", "link", "student", "nope", "--kind", "trained_on"], "unknown node 'nope'"),
        (["lineage", "link", "base-a", "student", "--kind", "derived_from"], "cycle"),
        (["lineage", "register", "model", "x", "--path", "/nonexistent"], "does not exist"),
        (["lineage", "register", "dataset", "x", "--table", "/nonexistent"], "not a Delta table"),
        (["lineage", "at-risk", "numbers"], "needs a model"),
        (["lineage", "draw", "teacher", "-o", "/tmp/x.gif"], "cannot draw"),
        (["lineage", "register", "run", "r", "--param", "novalue"], "KEY=VALUE"),
        (["lineage", "register", "model", "x", "--path", "/dev/null"], "is not a model"),
        (["lineage", "export", "--openlineage", "/tmp"], "cannot write /tmp: Is a directory"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    cli_lake: tuple[Lake, dict[str, str]], args: list[str], message: str
) -> None:
    lake, _ = cli_lake
    versions = (DeltaTable(lake.lineage_nodes).version(), DeltaTable(lake.lineage_edges).version())
    result = germline(*args, lake=lake, subprocess_=args[1] == "show")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert versions == (
        DeltaTable(lake.lineage_nodes).version(),
        DeltaTable(lake.lineage_edges).version(),
    )


def test_serve_on_a_busy_port_is_one_line_before_ray_starts(tmp_path: Path) -> None:
    import socket

    lake = Lake.resolve(tmp_path / "lake")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = germline("serve", "--port", str(port), lake=lake)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: cannot serve on 127.0.0.1:{port}: Address already in use "
                     "(another server has it; pick another --port)"]  # fmt: skip


def test_serve_asking_for_a_gpu_this_node_lacks_is_one_line(tmp_path: Path) -> None:
    """The model server runs on the node whose port it answers: one that lacks the GPU it
    asks for is an error, not a replica Serve waits for forever."""
    result = germline("serve", "--port", str(free_port()), "--num-gpus", "1",
                      lake=Lake.resolve(tmp_path), subprocess_=True)  # fmt: skip
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    expected = "error: the model server runs on the node that serves its port (this one)"
    assert last.startswith(f"{expected}, which has less than 1 GPU"), result.stderr


def test_a_corrupt_delta_log_is_one_line_without_rust_frames(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    germline("lineage", "register", "run", "r1", lake=lake, check=True)
    (Path(lake.lineage_nodes) / "_delta_log" / "00000000000000000000.json").write_text('{"cut')
    result = germline("lineage", "list", lake=lake)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read"), lines
    # deltalake appends a Rust backtrace ("0: <unknown>", "at ./nptl/..."): none of it
    assert "<unknown>" not in lines[0] and " at ./" not in lines[0] and "0: " not in lines[0]


def test_foreign_lineage_table_via_cli(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    Path(lake.lineage_nodes).mkdir(parents=True)
    (Path(lake.lineage_nodes) / "data.csv").write_text("a,b\n")
    result = germline("lineage", "list", lake=lake)
    assert result.returncode == 2 and "not a Delta table" in result.stderr


def test_demo(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    out = germline("demo", lake=lake, check=True, subprocess_=True).stdout
    assert "demo-student-owl" in out and "demo-student-gen2" in out
    assert (tmp_path / "lake" / "runs" / "demo-lineage.png").exists()
    # Reruns change nothing.
    versions = DeltaTable(lake.lineage_nodes).version()
    germline("demo", lake=lake, check=True)
    assert DeltaTable(lake.lineage_nodes).version() == versions
