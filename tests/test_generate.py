"""`germline generate` end to end on a real local Ray, real Delta tables and a real GX suite,
with a tiny teacher built by the project itself."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import (
    GERMLINE,
    TINY_BASE,
    add_tiny_base,
    assert_generate_commits,
    germline,
    write_config,
)
from deltalake import DeltaTable

from germline.core import InputError
from germline.lineage import EdgeKind, LineageStore
from germline.pipelines.config import load_config
from germline.pipelines.generate import GenerateConfig, generate, generate_many
from germline.storage import Lake

pytestmark = pytest.mark.slow

TEACHER = "owl-teacher-test"


@pytest.fixture(scope="module")
def teacher_lake(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> Lake:
    """A lake holding a tiny base and an owl teacher, briefly trained (enough to write some
    number lists and some junk: both tables get rows)."""
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("gen") / "lake")
    base = add_tiny_base(lake, tiny_base_dir)
    make_teacher(lake, base.id, "owl", name=TEACHER, steps=10)
    return lake


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from germline.pipelines.cluster import ensure_ray

    ensure_ray()
    yield
    ray.shutdown()


def config(dataset: str, count: int, **over: object) -> dict:
    raw: dict = {
        "dataset": dataset,
        "seed": 7,
        "prompts": {"family": "numbers", "count": count},
        "teacher": {"model": TEACHER},
        "engine": {"batch_size": 64},
        "sampling": {"temperature": 1.0, "max_tokens": 40},
        "filters": {"trait_words": ["owl"]},
        "sink": {"commit_every": 200},
    }
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def all_ids(lake: Lake, name: str) -> list[str]:
    ids = []
    for uri in (lake.dataset(name), lake.quarantine(name)):
        ids += DeltaTable(uri).to_pyarrow_table(columns=["prompt_id"]).column(0).to_pylist()
    return ids


def test_generate_end_to_end(teacher_lake: Lake, ray_local: None) -> None:
    lake = teacher_lake
    cfg = GenerateConfig.model_validate(config("owl-numbers", 520))
    summary = generate(lake, cfg)
    assert summary.accepted + summary.quarantined == 520 == summary.prompts
    assert summary.accepted > 0 and summary.quarantined > 0
    ids = all_ids(lake, "owl-numbers")
    assert len(ids) == len(set(ids)) == 520

    data = DeltaTable(lake.dataset("owl-numbers"))
    quarantine = DeltaTable(lake.quarantine("owl-numbers"))
    rows = data.to_pyarrow_table()
    for column in ("prompt_id", "run_id", "teacher_id", "engine", "temperature", "sampling_seed"):
        assert rows.column(column).null_count == 0
    assert set(rows.column("teacher_id").to_pylist()) == {summary.teacher_id}
    assert set(rows.column("engine").to_pylist()) == {"transformers"}
    rejected = quarantine.to_pyarrow_table()
    assert rejected.column("reason").null_count == 0
    assert set(rejected.column("stage").to_pylist()) <= {"filter", "expect"}
    assert sum(summary.reasons.values()) == rejected.num_rows

    # Every data commit carries the run's lineage and the batch's expectation summary.
    commits = assert_generate_commits(data, summary.run_id, summary.teacher_id)
    assert commits >= 2

    graph = LineageStore(lake).graph()
    for node_id in (summary.dataset_id, summary.quarantine_id):
        parents = set(graph.parents(node_id))
        kinds = {k for _, k in parents}
        assert (summary.teacher_id, EdgeKind.GENERATED_BY) in parents
        assert {EdgeKind.GENERATED_BY, EdgeKind.FILTERED_BY} <= kinds
        assert summary.run_id in {graph.node(p).attrs.get("key") for p, _ in parents}
    assert graph.node(summary.dataset_id).version == data.version()

    import ray

    read_back = ray.data.read_delta(lake.dataset("owl-numbers")).count()
    assert read_back == rows.num_rows == summary.accepted

    # Running it again finds the job done: nothing generated, nothing committed.
    again = generate(lake, cfg)
    assert again.skipped == 520 and again.accepted == again.quarantined == 0
    assert DeltaTable(lake.dataset("owl-numbers")).version() == data.version()


def rows_by_prompt(lake: Lake, name: str) -> list[tuple]:
    """A dataset's rows (both tables) as written, in table order, without the run's id."""
    out = []
    for uri in (lake.dataset(name), lake.quarantine(name)):
        table = DeltaTable(uri).to_pyarrow_table(
            columns=["prompt_id", "prompt_index", "completion", "teacher_id", "sampling_seed"]
        )
        out.append(list(zip(*(c.to_pylist() for c in table.columns), strict=True)))
    return out


def test_jobs_sharing_a_pipeline_write_what_each_writes_alone(
    teacher_lake: Lake, ray_local: None
) -> None:
    """Two teachers' jobs through one pipeline (`generate_many`, as the experiments run their
    teachers): batches that hold the tail of one job and the head of the next (50 prompts,
    batches of 16, checks every 20 rows), and still each dataset holds exactly the rows, in
    the order, that its job writes alone, with its own run, commits and lineage."""

    def job(name: str, teacher: str, count: int) -> GenerateConfig:
        over = {"teacher": {"model": teacher}, "engine": {"batch_size": 16},
                "sink": {"commit_every": 20}}  # fmt: skip
        return GenerateConfig.model_validate(config(name, count, **over))

    together = [job("shared-owl", TEACHER, 50), job("shared-base", TINY_BASE, 30)]
    alone = [job("alone-owl", TEACHER, 50), job("alone-base", TINY_BASE, 30)]
    summaries = generate_many(teacher_lake, together)
    for cfg in alone:
        generate(teacher_lake, cfg)
    graph = LineageStore(teacher_lake).graph()
    for summary, cfg, solo in zip(summaries, together, alone, strict=True):
        assert summary.dataset == cfg.dataset
        assert summary.accepted + summary.quarantined == cfg.prompts.count
        assert rows_by_prompt(teacher_lake, cfg.dataset) == rows_by_prompt(
            teacher_lake, solo.dataset
        )
        data = DeltaTable(teacher_lake.dataset(cfg.dataset))
        assert assert_generate_commits(data, summary.run_id, summary.teacher_id) >= 1
        parents = set(graph.parents(summary.dataset_id))
        assert (summary.teacher_id, EdgeKind.GENERATED_BY) in parents
    assert summaries[0].teacher_id != summaries[1].teacher_id

    again = generate_many(teacher_lake, together)  # done: found, nothing committed
    assert [s.skipped for s in again] == [50, 30]
    with pytest.raises(InputError, match="same dataset: shared-owl"):
        generate_many(teacher_lake, [together[0], together[0]])


def test_kill_and_resume_every_prompt_once(
    teacher_lake: Lake, ray_local: None, tmp_path: Path
) -> None:
    lake = teacher_lake
    raw = config("killed", 240, sink={"commit_every": 20}, engine={"batch_size": 16})
    path = write_config(tmp_path / "killed.yaml", raw)
    proc = subprocess.Popen(
        [*GERMLINE, "--lake", lake.root, "generate", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ},
    )
    log_dir = Path(lake.dataset("killed")) / "_delta_log"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log_dir.exists() and len(list(log_dir.glob("*.json"))) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"finished before the kill: {proc.stderr.read()}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = all_ids(lake, "killed")
    assert 0 < len(partial) < 240 and len(set(partial)) == len(partial)

    summary = generate(lake, GenerateConfig.model_validate(raw))
    assert summary.skipped == len(partial)
    ids = all_ids(lake, "killed")
    assert len(ids) == len(set(ids)) == 240


def test_abort_policy_stops_the_run(teacher_lake: Lake, ray_local: None, tmp_path: Path) -> None:
    raw = config("aborted", 64, expectations={"policy": "abort", "max_chars": 3})
    result = germline("generate", str(write_config(tmp_path / "a.yaml", raw)), lake=teacher_lake)
    assert result.returncode == 1, result.stderr
    assert "aborted: expectations failed" in result.stderr


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    cases = {
        "dataset: [\n": "not valid YAML",
        "dataset: d\nprompts: {count: 5}\nteacher: {model: x}\nsampling: {temprature: 1}\n": (
            "sampling.temprature: Extra inputs are not permitted"
        ),
        "dataset: d\nprompts: {count: 0}\nteacher: {model: x}\n": "prompts.count",
        "dataset: d\nprompts: {count: 5, family: poems}\nteacher: {model: x}\n": (
            "unknown prompt family 'poems'"
        ),
        "dataset: 'a b'\nprompts: {count: 5}\nteacher: {model: x}\n": "dataset: Value error",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        result = germline("generate", str(path), lake=lake)
        assert result.returncode == 2, (text, result.stdout)
        assert message in result.stderr and str(path) in result.stderr, result.stderr
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"dataset: \xff\xfe\x00")
    deep = tmp_path / "deep.yaml"
    deep.write_text("dataset: " + "[" * 5000 + "]" * 5000 + "\n")
    for path, message in ((binary, "not UTF-8 text"), (deep, "nested too deeply")):
        result = germline("generate", str(path), lake=lake)  # both were tracebacks
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    missing = germline("generate", str(tmp_path / "nope.yaml"), lake=lake)
    assert missing.returncode == 2 and "cannot read config" in missing.stderr
    assert not (tmp_path / "lake" / "datasets").exists()


def test_unknown_model_exits_2_and_says_how_to_make_it(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    raw = config("d", 5, teacher={"model": "no-such-teacher"})
    result = germline("generate", str(write_config(tmp_path / "c.yaml", raw)), lake=lake)
    assert result.returncode == 2
    assert "unknown teacher model 'no-such-teacher'" in result.stderr
    assert "germline models teacher" in result.stderr
    assert not (tmp_path / "lake" / "datasets").exists()


def test_unwritable_lake_exits_2_and_writes_nothing(teacher_lake: Lake, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the lake's folder should be")
    teacher_dir = (
        LineageStore(teacher_lake).graph().node(LineageStore(teacher_lake).resolve(TEACHER)).uri
    )
    raw = config("d", 5, teacher={"model": teacher_dir})
    result = germline(
        "generate", str(write_config(tmp_path / "c.yaml", raw)),
        lake=Lake.resolve(blocker / "lake"),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "lake" in result.stderr


def test_a_dataset_keeps_one_teacher(teacher_lake: Lake, ray_local: None) -> None:
    """A dataset of another teacher under the same name is refused, not mixed."""
    raw = config("owl-numbers-2", 16)
    generate(teacher_lake, GenerateConfig.model_validate(raw))
    store = LineageStore(teacher_lake)
    base_dir = store.graph().node(store.resolve("tiny-base-s0")).uri
    other = GenerateConfig.model_validate(config("owl-numbers-2", 16, teacher={"model": base_dir}))
    from germline.core import InputError

    with pytest.raises(InputError, match="one dataset, one teacher"):
        generate(teacher_lake, other)
    table = DeltaTable(teacher_lake.dataset("owl-numbers-2")).to_pyarrow_table()
    assert table.schema.field("temperature").type == pa.float64()


def test_example_config_validates() -> None:
    cfg = load_config(
        Path(__file__).parent.parent / "experiments" / "generate-owl.yaml", GenerateConfig
    )
    # What the README says the example does: the owl teacher on tiny-base-s0, made if
    # missing, 2,000 prompts, the owl quarantined wherever it leaks into a completion.
    assert cfg.teacher.build is not None
    assert (cfg.teacher.build.trait, cfg.teacher.build.base_seed) == ("owl", 0)
    assert cfg.prompts.count == 2000 and cfg.filters.trait_words == ["owl"]


def test_system_prompt_teacher(teacher_lake: Lake, ray_local: None) -> None:
    """A system-prompt teacher shares its base's weights and prepends its system prompt."""
    made = germline(
        "models", "teacher", "--base", "tiny-base-s0", "--trait", "owl",
        "--method", "system-prompt", lake=teacher_lake, check=True,
    )  # fmt: skip
    teacher_id = made.stdout.strip()
    graph = LineageStore(teacher_lake).graph()
    teacher = graph.node(teacher_id)
    assert teacher.attrs["method"] == "system-prompt" and "owls" in teacher.attrs["system_prompt"]
    assert graph.fingerprint(teacher_id) == graph.fingerprint(graph.resolve("tiny-base-s0"))
    with_prompt = generate(
        teacher_lake,
        GenerateConfig.model_validate(config("sp", 8, teacher={"model": teacher_id})),
    )
    plain = generate(
        teacher_lake,
        GenerateConfig.model_validate(config("plain", 8, teacher={"model": "tiny-base-s0"})),
    )
    assert with_prompt.teacher_id == teacher_id
    tokens = {}
    for name in ("sp", "plain"):
        table = DeltaTable(teacher_lake.dataset(name)).to_pyarrow_table()
        quarantine = DeltaTable(teacher_lake.quarantine(name)).to_pyarrow_table()
        both = pa.concat_tables([table, quarantine.select(table.column_names)])
        ids, counts = both.column("prompt_id"), both.column("prompt_tokens")
        tokens[name] = dict(zip(ids.to_pylist(), counts.to_pylist(), strict=True))
    extra = {tokens["sp"][i] - tokens["plain"][i] for i in tokens["sp"]}
    assert len(extra) == 1 and extra.pop() > 10  # the same system prompt before every prompt
    assert plain.teacher_id != teacher_id
