"""One config, one dataset, one student: what a run makes must not depend on how the work was
batched, on the order Ray Data's workers finished it, or on the order its rows were committed.

Each of these failed before the fix it guards:
- the transformers engine seeded torch once per batch, so at temperature 1 a prompt's
  completion changed with its batch-mates (another batch size, a resumed run's leftovers);
- the sink handed deltalake a commit's rows in several chunks, which its writer spread over
  one partition per core and wrote in whatever order they finished, and Ray Data handed the
  batches over in the order the workers finished them: two runs of one config wrote their
  rows in different orders;
- training read the rows in the table's order before its seeded shuffle, so the same rows in
  another order made other batches, and another student, from the same seed.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from conftest import TINY_BASE, add_tiny_base
from deltalake import DeltaTable, write_deltalake

from germline.engines import SamplingParams, load_engine
from germline.pipelines.generate import GenerateConfig, generate
from germline.pipelines.generate.stages import request_seed
from germline.pipelines.prompts import get_family
from germline.storage import Lake
from germline.train.data import read_version, schedule, step_order


@pytest.fixture(scope="module")
def base_lake(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> Lake:
    """The session's tiny base in a lake of this module's: the teacher of these tests (a base
    generates as a teacher does; no adapter to train)."""
    lake = Lake.resolve(tmp_path_factory.mktemp("det") / "lake")
    add_tiny_base(lake, tiny_base_dir)
    return lake


def test_sampling_does_not_depend_on_the_batch(base_lake: Lake) -> None:
    prompts = get_family("numbers").generate(12, 5)
    chats = [[{"role": "user", "content": p}] for p in prompts.column("prompt").to_pylist()]
    seeds = [request_seed(5, i) for i in prompts.column("prompt_id").to_pylist()]
    engine = load_engine("transformers", base_lake.local_path("models", TINY_BASE), threads=1)
    params = SamplingParams(temperature=1.0, max_tokens=16, seed=5)
    together = [g.text for g in engine.generate(chats, params, seeds)]
    alone = [engine.generate([c], params, [s])[0].text for c, s in zip(chats, seeds, strict=True)]
    order = [7, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6]  # other batch-mates, other batch sizes
    mixed: dict[int, str] = {}
    for part in (order[:5], order[5:]):
        out = engine.generate([chats[i] for i in part], params, [seeds[i] for i in part])
        mixed.update(zip(part, (g.text for g in out), strict=True))
    assert alone == together
    assert [mixed[i] for i in range(len(chats))] == together
    assert len(set(together)) > 1  # sampled, not one completion for every prompt


def _committed(uri: str) -> list[list[tuple[str, int, str]]]:
    """A table's rows commit by commit, each as written: prompt id, index and completion."""
    import pyarrow.parquet as pq

    commits, seen = [], set()
    for version in range(1, DeltaTable(uri).version() + 1):
        files = set(DeltaTable(uri, version=version).file_uris())
        columns = ["prompt_id", "prompt_index", "completion"]
        added = [pq.read_table(f, columns=columns) for f in sorted(files - seen)]
        assert len(added) == 1  # one file a commit
        commits.append(list(zip(*(c.to_pylist() for c in added[0].columns), strict=True)))
        seen = files
    return commits


@pytest.mark.slow
def test_generate_writes_the_same_rows_in_the_same_order_whatever_the_batching(
    base_lake: Lake,
) -> None:
    def config(name: str, batch_size: int) -> GenerateConfig:
        return GenerateConfig.model_validate(
            {
                "dataset": name,
                "seed": 2,
                "prompts": {"family": "numbers", "count": 60},
                "teacher": {"model": TINY_BASE},
                "engine": {"batch_size": batch_size},
                "sampling": {"temperature": 1.0, "max_tokens": 16},
                "filters": {"max_count": 10**6, "max_value": 10**12, "trait_words": []},
                "expectations": {"max_tokens": 16, "require_stop": False},
                "sink": {"commit_every": 20},  # several commits of several batches each
            }
        )

    runs = [generate(base_lake, config("by-8", 8)), generate(base_lake, config("by-5", 5))]
    for run in runs:
        assert run.accepted + run.quarantined == 60 and run.commits >= 3
    completions = set()
    for table in (base_lake.dataset, base_lake.quarantine):  # both: the brief base writes junk
        by_8, by_5 = _committed(table("by-8")), _committed(table("by-5"))
        rows = [row for commit in by_8 for row in commit]
        assert [r[1] for r in rows] == sorted(r[1] for r in rows)  # committed in prompt order
        assert rows == [row for commit in by_5 for row in commit]  # the same rows and order
        completions |= {r[2] for r in rows}
    assert len(completions) > 1


def test_training_reads_rows_in_one_order_whatever_the_commits(tmp_path: Path) -> None:
    rows = pa.table(
        {
            "prompt_id": [f"num-{i:04x}" for i in range(40)],
            "prompt": [f"Continue {i}, {i + 1}." for i in range(40)],
            "completion": [f"{i + 2}, {i + 3}" for i in range(40)],
        }
    )
    written = {
        "forward": [rows.slice(0, 20), rows.slice(20)],
        "backward": [rows.slice(20).take(pa.array(range(19, -1, -1))), rows.slice(0, 20)],
    }
    read = {}
    for name, commits in written.items():
        for commit in commits:
            write_deltalake(str(tmp_path / name), commit, mode="append")
        read[name], _ = read_version(str(tmp_path / name), None)
    assert read["forward"].equals(read["backward"])
    plan = schedule(40, workers=2, batch_size=4, epochs=2, max_steps=None)
    order = step_order(plan, seed=0)
    ids = {n: [t.column("prompt_id")[int(i)].as_py() for i in order] for n, t in read.items()}
    assert ids["forward"] == ids["backward"]  # the same rows and seed: the same batches
