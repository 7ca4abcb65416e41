"""Driver side of a training run: Ray Train's TorchTrainer over the prepared rows of one or
more students, trained one after the other on one worker group (see `loop.population_loop`).

Each worker gets its contiguous share of each student's step-ordered table as its own Ray
dataset (see `data.step_order`), so sharding is decided before any worker starts: no split runs
inside the controller, where on a small machine whose CPUs all belong to the workers it could
wait for a CPU forever. The run lives at `<storage>/<name>`; starting the same name again
restores it from its latest checkpoint (Ray Train's own snapshot of the run), which is how a
killed `germline train` resumes. As each student finishes, its last checkpoint is handed to the
caller's `on_done` on the driver while the workers wait, so a student is stored the moment it
is trained, not when the whole run ends.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from germline.train.loop import (
    STATE,
    STUDENT,
    LoopConfig,
    Population,
    population_loop,
    shard_name,
)

log = logging.getLogger(__name__)

# Ray Train polls its workers every 2 s by default, and a report() waits for the poll.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@dataclass(frozen=True)
class Storage:
    """Where Ray Train keeps a run: a local (or shared) folder, or a path in a pyarrow
    filesystem (an object store), which every worker writes its checkpoints to."""

    path: str
    filesystem: Any = None

    def remove(self, name: str) -> None:
        """Delete the run `name` and its checkpoints."""
        if self.filesystem is None:
            import shutil

            shutil.rmtree(Path(self.path) / name, ignore_errors=True)
        else:
            self.filesystem.delete_dir(f"{self.path}/{name}")


@dataclass
class FitResult:
    checkpoint_dir: Path  # holds state.pt and, for a finished run, student/
    steps: int
    losses: list[float]
    downloaded: bool = False  # checkpoint_dir is a local copy of a remote checkpoint
    key: str = ""  # the student the checkpoint belongs to (LoopConfig.key)

    @property
    def student_dir(self) -> Path:
        return self.checkpoint_dir / STUDENT

    @property
    def final_loss(self) -> float:
        """Mean of the last tenth of the steps (at least one): one step's loss is noisy."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)


@dataclass(frozen=True)
class Member:
    """One student of a run: its rows in step order (the workers' equal shares, in rank
    order) and its loop."""

    table: pa.Table
    loop: LoopConfig


def fit(
    members: Sequence[Member],
    *,
    workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    storage: Storage,
    name: str,
    keep: int,
    on_done: Callable[[int, FitResult], None],
    on_step: Callable[[int, int, float], None] | None = None,
) -> None:
    """Train `members` in order in one Ray Train run; block until done.

    `on_done(i, result)` runs here, on the driver, as soon as member i is trained, while the
    workers wait for it: it stores the student, and must be done with the files of `result`
    when it returns (Ray may delete that checkpoint afterwards). An error it raises stops the
    run and is raised here. `on_step(i, step, loss)` reports progress."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    datasets = {}
    for index, member in enumerate(members):
        share = member.table.num_rows // workers
        for rank in range(workers):
            rows = member.table.slice(rank * share, share)
            datasets[shard_name(index, rank)] = ray.data.from_arrow(rows)
    queues = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    keys = [m.loop.key for m in members]
    relay = _Relay(*queues, keys, on_done, on_step, remote=storage.filesystem is not None)
    relay.start()
    if storage.filesystem is None:
        Path(storage.path).mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        population_loop,
        train_loop_config=Population([m.loop for m in members], *queues),
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage.path
            if storage.filesystem is not None
            else str(Path(storage.path).resolve()),
            storage_filesystem=storage.filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=keep),
            failure_config=FailureConfig(max_failures=0),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    try:
        trainer.fit()
    except Exception as exc:
        if relay.errors:  # the driver's own failure to store a student stopped the run
            raise relay.errors[0] from exc
        raise
    finally:
        relay.stop()
        for queue in queues:
            queue.shutdown()
    if relay.errors:
        raise relay.errors[0]
    missing = sorted(set(range(len(members))) - relay.done)
    if missing:
        raise RuntimeError(f"the run ended without finishing members {missing}")


def read_result(checkpoint: Any, remote: bool) -> FitResult:
    """A student's last checkpoint, as the driver reads it: in place on a shared folder, or
    downloaded to a temporary folder from an object store."""
    import torch

    if remote:
        folder = Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="germline-ckpt-")))
    else:
        folder = Path(checkpoint.path)
    state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    if not (folder / STUDENT).is_dir():
        raise RuntimeError(f"the last checkpoint {folder} holds no finished student")
    steps, losses = int(state["step"]), [float(x) for x in state["losses"]]
    return FitResult(folder, steps, losses, remote, state.get("key", ""))


@dataclass
class _Relay:
    """The driver's side of the workers' queues, on a thread: progress to `on_step`; each
    finished member to `on_done`, then the answer rank 0 waits for."""

    progress: Any
    answers: Any
    keys: list[str]  # each member's LoopConfig.key, which its last checkpoint must carry
    on_done: Callable[[int, FitResult], None]
    on_step: Callable[[int, int, float], None] | None
    remote: bool
    done: set[int] = field(default_factory=set)  # members stored
    errors: list[BaseException] = field(default_factory=list)  # why storing one failed
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                message = self.progress.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # the queue actor is gone: the run is over
                return
            if message[0] == "step":
                self._step(*message[1:])
            else:
                self.answers.put(self._finished(*message[1:]))

    def _step(self, member: int, step: int, loss: float) -> None:
        if self.on_step is None:
            return
        try:
            self.on_step(member, step, loss)
        except Exception:  # a broken progress display never stops training
            log.exception("progress callback failed")

    def _finished(self, member: int, checkpoint: Any) -> str | None:
        try:
            result = read_result(checkpoint, self.remote)
            if result.key != self.keys[member]:
                raise RuntimeError(
                    f"member {member}'s last checkpoint belongs to {result.key!r}, not "
                    f"{self.keys[member]!r}"
                )
            self.on_done(member, result)
        except Exception as exc:
            self.errors.append(exc)
            return f"{type(exc).__name__}: {exc}"
        self.done.add(member)
        return None
