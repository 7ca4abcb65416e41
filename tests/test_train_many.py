"""`train_many`: a population of students in one Ray Train run, each the very student `train`
would make alone, each stored as soon as it is finished; a run stopped midway, rerun, trains
only what is missing. A tiny base, a small hand-written dataset, a real local Ray, 1 worker."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch
from conftest import TINY_BASE, add_tiny_base
from deltalake import write_deltalake
from safetensors.torch import load_file

import germline.pipelines.finetune.run as run
import germline.train.trainer as trainer
from germline.core import InputError
from germline.lineage import LineageStore
from germline.pipelines.finetune import TrainConfig, TrainSummary, train, train_many
from germline.storage import Lake

FIRST, TWIN, BROKEN, LAST = "pop-first", "pop-twin", "pop-broken", "pop-last"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> Iterator[Lake]:
    """The tiny base and 64 number rows, on a local Ray that is shut down afterwards."""
    import ray

    from germline.pipelines.cluster import ensure_ray

    lake = Lake.resolve(tmp_path_factory.mktemp("many") / "lake")
    add_tiny_base(lake, tiny_base_dir)
    rng = random.Random(0)
    numbers = lambda k: ", ".join(str(rng.randrange(1000)) for _ in range(k))  # noqa: E731
    rows = 64
    write_deltalake(
        lake.dataset("numbers"),
        pa.table(
            {
                "prompt_id": [f"p{i:03d}" for i in range(rows)],
                "prompt": [f"Continue the list: {numbers(4)}" for _ in range(rows)],
                "completion": [numbers(6) for _ in range(rows)],
            }
        ),
    )
    ensure_ray()
    yield lake
    ray.shutdown()


def config(student: str, seed: int, **over: object) -> TrainConfig:
    raw: dict = {
        "student": student,
        "base": TINY_BASE,
        "dataset": {"name": "numbers"},
        "seed": seed,
        "optim": {"batch_size": 8, "max_steps": 6, "lr": 1e-2, "warmup_steps": 2},
        "scaling": {"num_workers": 1},
        # keep 1: each student's last checkpoint is gone once the next one has checkpointed,
        # so a student that was not stored in time would be lost
        "checkpoint": {"every": 2, "keep": 1},
    }
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.model_validate(raw)


def population() -> list[TrainConfig]:
    """`TWIN` is trained exactly as the reference (seed 3) under another name, after `FIRST`
    in the same worker process; storing `BROKEN` fails the first time."""
    return [config("reference", 3), config(FIRST, 1), config(TWIN, 3), config(BROKEN, 2),
            config(LAST, 4)]  # fmt: skip


def adapter(lake: Lake, student: str) -> dict[str, torch.Tensor]:
    return load_file(str(lake.local_path("models", student) / "adapter_model.safetensors"))


def stored(lake: Lake, student: str) -> bool:
    return (lake.local_path("models", student) / "germline.json").exists()


def meta(lake: Lake, student: str) -> dict:
    return json.loads((lake.local_path("models", student) / "germline.json").read_text())[
        "germline"
    ]


class Fits:
    """Counts the Ray Train runs (`trainer.fit` calls) and how many students each trained."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        real = trainer.fit

        def counted(members, **kwargs):
            self.sizes.append(len(members))
            return real(members, **kwargs)

        mp.setattr(trainer, "fit", counted)


@pytest.fixture(scope="module")
def reference(lake: Lake) -> TrainSummary:
    """The student `train` makes alone: what its twin in the population must equal."""
    return train(lake, config("reference", 3))


@pytest.fixture(scope="module")
def interrupted(lake: Lake, reference: TrainSummary) -> tuple[Exception, list[int]]:
    """The population's first run, stopped by a failure to store `BROKEN` (a full disk, say):
    what it raised and the Ray Train runs it took."""
    write = run._write_student

    def failing(lake_: Lake, name: str, *args, **kwargs):
        if name == BROKEN:
            raise OSError("no space left on device")
        return write(lake_, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        fits = Fits(mp)
        mp.setattr(run, "_write_student", failing)
        with pytest.raises(OSError, match="no space left") as failed:
            train_many(lake, population())
    return failed.value, fits.sizes


@pytest.fixture(scope="module")
def rerun(lake: Lake, interrupted) -> tuple[list[TrainSummary], list[int], list[tuple]]:
    """The same call again: its summaries, its Ray Train runs and its progress posts."""
    posts: list[tuple] = []
    with pytest.MonkeyPatch.context() as mp:
        fits = Fits(mp)
        summaries = train_many(lake, population(), progress=lambda *a: posts.append(a))
    return summaries, fits.sizes, posts


@pytest.mark.slow
def test_one_run_stores_each_student_as_soon_as_it_is_finished(lake: Lake, interrupted) -> None:
    _, fits = interrupted
    assert fits == [4]  # all but the reference (already trained), in one run that stopped
    # at BROKEN, after storing FIRST and TWIN
    assert stored(lake, FIRST) and stored(lake, TWIN)  # before the run failed
    assert not stored(lake, BROKEN) and not stored(lake, LAST)


@pytest.mark.slow
def test_a_population_student_is_bit_identical_to_trains(lake: Lake, reference, rerun) -> None:
    ref, twin = adapter(lake, "reference"), adapter(lake, TWIN)
    assert ref.keys() == twin.keys() and ref
    for name in ref:
        assert torch.equal(ref[name], twin[name]), name
    assert meta(lake, TWIN)["losses"] == meta(lake, "reference")["losses"]
    assert meta(lake, TWIN)["config_hash"] == meta(lake, "reference")["config_hash"]
    other = adapter(lake, FIRST)  # another seed: another student
    assert any(not torch.equal(ref[name], other[name]) for name in ref)


@pytest.mark.slow
def test_the_rerun_trains_only_what_is_missing(lake: Lake, reference, rerun) -> None:
    summaries, fits, posts = rerun
    assert fits == [2]  # BROKEN and LAST, in one run
    by_name = {s.student: s for s in summaries}
    assert [s.student for s in summaries] == [c.student for c in population()]
    for name in ("reference", FIRST, TWIN):
        assert by_name[name].already_trained, name
    assert by_name["reference"].student_id == reference.student_id
    broken, last = by_name[BROKEN], by_name[LAST]
    assert not broken.already_trained and not last.already_trained
    # BROKEN's last checkpoint outlived the failure: it is stored from it, not trained again
    assert broken.resumed_from == broken.steps == 6
    assert last.resumed_from == 0 and last.steps == 6
    assert {p[0] for p in posts} == {LAST}
    assert [p[1] for p in posts] == list(range(1, 7)) and {p[2] for p in posts} == {6}
    assert last.seconds > 0 and last.samples_per_s > 0
    assert not list((Path(lake.root) / "runs").glob("train-many-*"))  # removed when done
    again = train_many(lake, population())
    assert all(s.already_trained for s in again)


@pytest.mark.slow
def test_population_students_are_stored_and_registered_as_train_does(
    lake: Lake, reference, rerun
) -> None:
    summaries, _, _ = rerun
    twin = next(s for s in summaries if s.student == TWIN)
    folder = lake.local_path("models", TWIN)
    ours = {p.name for p in folder.iterdir() if p.name != "checkpoints"}
    theirs = {p.name for p in Path(reference.model_dir).iterdir() if p.name != "checkpoints"}
    assert ours == theirs and "germline.json" in ours and "README.md" in ours
    card = Path(reference.model_dir, "README.md").read_text()
    assert (folder / "README.md").read_text() == card.replace("reference", TWIN)
    skip = {"name", "run"}
    assert {k: v for k, v in meta(lake, TWIN).items() if k not in skip} == {
        k: v for k, v in meta(lake, "reference").items() if k not in skip
    }
    graph = LineageStore(lake).graph()
    for s in (reference, twin):
        parents = {(kind, dst) for dst, kind in graph.parents(s.student_id)}
        assert parents == {
            ("derived_from", s.base_id),
            ("trained_on", s.dataset_id),
            ("generated_by", s.run_id),
        }
        assert graph.node(s.run_id).attrs["params"]["final_loss"] == pytest.approx(s.final_loss)
    assert (twin.steps, twin.rows, twin.global_batch, twin.first_loss, twin.final_loss) == (
        reference.steps,
        reference.rows,
        reference.global_batch,
        reference.first_loss,
        reference.final_loss,
    )


def test_every_config_is_checked_before_ray_starts(lake: Lake, monkeypatch) -> None:
    fits = Fits(monkeypatch)
    with pytest.raises(InputError, match="unknown base model 'no-such-base'"):
        train_many(lake, [config("ok-1", 1), config("bad", 1, base="no-such-base")])
    with pytest.raises(InputError, match="make no full step"):
        train_many(lake, [config("ok-1", 1), config("bad", 1, optim={"batch_size": 4096})])
    with pytest.raises(InputError, match="named more than once: ok-1"):
        train_many(lake, [config("ok-1", 1), config("ok-1", 2)])
    assert fits.sizes == []
    assert not lake.local_path("models", "ok-1").exists()
    assert train_many(lake, []) == []


def test_students_share_a_run_only_with_the_same_worker_group() -> None:
    students = [
        SimpleNamespace(config=config("a", 1)),
        SimpleNamespace(config=config("b", 1, scaling={"num_workers": 2})),
        SimpleNamespace(config=config("c", 1, scaling={"threads": 2})),  # threads: per student
        SimpleNamespace(config=config("d", 1, scaling={"num_workers": 2, "use_gpu": True})),
    ]
    groups = run._by_scaling(students)  # type: ignore[arg-type]
    assert [[s.config.student for s in g] for g in groups] == [["a", "c"], ["b"], ["d"]]
