"""`germline generate` with the vLLM engine, end to end: a real local Ray, vLLM inside the
pipeline's engine actor, real Delta tables, a real GX suite and a teacher built by germline.

Runs only where vLLM is installed (`.venv-vllm`, which `make test-vllm` builds, or a GPU node);
the main environment skips the module. vLLM starts in the engine actor (30-40 s on a CPU), so
one run serves every assertion: the fixtures are module-scoped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import assert_generate_commits, require_vllm
from deltalake import DeltaTable

from germline.lineage import EdgeKind, LineageStore
from germline.pipelines.generate import GenerateConfig, GenerateSummary, generate
from germline.storage import Lake

require_vllm()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    # Ray Data's own DataContext sets its deprecated attributes when it starts a dataset.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

TEACHER = "owl-teacher-vllm"
DATASET = "owl-numbers-vllm"
PROMPTS = 200


@dataclass
class Run:
    lake: Lake
    config: GenerateConfig
    summary: GenerateSummary
    progress: list[dict]  # what each progress call saw (the summary object itself mutates)


@pytest.fixture(scope="module")
def teacher_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """A tiny base and an owl adapter on it, made and registered by germline itself. A few
    steps only: the base then writes number lists for some prompts and junk for the rest, so
    both tables get rows."""
    from germline.pipelines.models.bootstrap import bootstrap_base
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("vllm-gen") / "lake")
    base = bootstrap_base(lake, seed=0, steps=60)
    make_teacher(lake, base.id, "owl", name=TEACHER, steps=5)
    return lake


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """The embedded cluster `germline generate` starts by itself: on a 2-core machine it has
    2 CPUs, which holds the engine actor (1 CPU) and the checks actor (0.1)."""
    import ray

    from germline.pipelines.cluster import ensure_ray

    ensure_ray()
    yield
    ray.shutdown()


def config(**over: object) -> GenerateConfig:
    raw: dict = {
        "dataset": DATASET,
        "seed": 7,
        "prompts": {"family": "numbers", "count": PROMPTS},
        "teacher": {"model": TEACHER},
        "engine": {
            "kind": "vllm",
            "batch_size": 64,
            # Passed to vllm.LLM as they are; the CPU defaults (eager, a 1 GiB KV cache,
            # float32, no chunked prefill) fill in the rest.
            "options": {"dtype": "float32", "max_model_len": 256},
        },
        "sampling": {"temperature": 1.0, "max_tokens": 40},
        "filters": {"trait_words": ["owl"]},
        "expectations": {"max_tokens": 40},
        "sink": {"commit_every": 64},
        **over,
    }
    return GenerateConfig.model_validate(raw)


@pytest.fixture(scope="module")
def run(teacher_lake: Lake, ray_local: None) -> Run:
    progress: list[dict] = []
    cfg = config()
    summary = generate(teacher_lake, cfg, progress=lambda s: progress.append(s.to_dict()))
    return Run(teacher_lake, cfg, summary, progress)


def tables(lake: Lake) -> tuple[DeltaTable, DeltaTable]:
    return DeltaTable(lake.dataset(DATASET)), DeltaTable(lake.quarantine(DATASET))


def test_every_prompt_once_across_both_tables(run: Run) -> None:
    summary = run.summary
    assert summary.prompts == PROMPTS and summary.skipped == 0
    assert summary.accepted + summary.quarantined == PROMPTS
    assert summary.accepted > 0 and summary.quarantined > 0
    data, quarantine = tables(run.lake)
    accepted, rejected = data.to_pyarrow_table(), quarantine.to_pyarrow_table()
    assert (accepted.num_rows, rejected.num_rows) == (summary.accepted, summary.quarantined)
    ids = accepted.column("prompt_id").to_pylist() + rejected.column("prompt_id").to_pylist()
    assert len(ids) == len(set(ids)) == PROMPTS
    assert summary.completion_tokens > 0 and summary.commits >= 2
    # One progress call before streaming, then one per commit round, counting up to the end.
    assert len(run.progress) >= 2
    assert run.progress[-1]["answered"] == PROMPTS


def test_rows_say_vllm_made_them(run: Run) -> None:
    for table in tables(run.lake):
        rows = table.to_pyarrow_table()
        assert set(rows.column("engine").to_pylist()) == {"vllm"}
        assert set(rows.column("teacher_id").to_pylist()) == {run.summary.teacher_id}
        assert set(rows.column("run_id").to_pylist()) == {run.summary.run_id}
        for column in ("prompt_id", "temperature", "sampling_seed", "completion_tokens"):
            assert rows.column(column).null_count == 0
        tokens = rows.column("completion_tokens").to_pylist()
        assert all(0 < t <= 40 for t in tokens)
        assert set(rows.column("finish_reason").to_pylist()) <= {"stop", "length"}
    rejected = tables(run.lake)[1].to_pyarrow_table()
    assert rejected.column("reason").null_count == 0
    assert set(rejected.column("stage").to_pylist()) <= {"filter", "expect"}


def test_commits_carry_lineage_metadata(run: Run) -> None:
    summary = run.summary
    total = 0
    for table in tables(run.lake):
        commits = assert_generate_commits(table, summary.run_id, summary.teacher_id)
        assert commits
        total += commits
    assert total == summary.commits


def test_lineage_dataset_generated_by_the_teacher(run: Run) -> None:
    summary = run.summary
    graph = LineageStore(run.lake).graph()
    assert summary.teacher_id == graph.resolve(TEACHER)
    for node_id in (summary.dataset_id, summary.quarantine_id):
        parents = set(graph.parents(node_id))
        assert (summary.teacher_id, EdgeKind.GENERATED_BY) in parents
        assert EdgeKind.FILTERED_BY in {kind for _, kind in parents}
        assert summary.run_id in {graph.node(p).attrs.get("key") for p, _ in parents}
        assert graph.node(node_id).attrs["summary"]["accepted"] == summary.accepted
    data, _ = tables(run.lake)
    assert graph.node(summary.dataset_id).version == data.version()
    # The run node records the engine the rows came from.
    (run_node,) = [
        graph.node(p)
        for p, _ in graph.parents(summary.dataset_id)
        if graph.node(p).attrs.get("key") == summary.run_id
    ]
    assert run_node.attrs["params"]["config"]["engine"]["kind"] == "vllm"


def test_rerun_resumes_and_commits_nothing(run: Run) -> None:
    versions = [t.version() for t in tables(run.lake)]
    again = generate(run.lake, run.config)
    assert again.run_id == run.summary.run_id
    assert again.skipped == PROMPTS and again.accepted == again.quarantined == 0
    assert again.commits == 0
    assert [t.version() for t in tables(run.lake)] == versions
