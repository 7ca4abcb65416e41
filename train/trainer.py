"""Driver side of a training run: Ray Train's TorchTrainer over the prepared rows.

Each worker gets its contiguous share of the step-ordered table as its own Ray dataset (see
`data.step_order`), so sharding is decided before any worker starts: no split runs inside the
controller, where on a small machine whose CPUs all belong to the workers it could wait for a
CPU forever. The run lives at `<storage>/<name>`; starting the same name again restores it
from its latest checkpoint (Ray Train's own snapshot of the run), which is how a killed
`germline train` resumes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from germline.train.loop import STATE, STUDENT, LoopConfig, train_loop

log = logging.getLogger(__name__)

# Ray Train polls its workers every 2 s by default, and a report() waits for the poll.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@dataclass(frozen=True)
class Storage:
    """Where Ray Train keeps a run: a local (or shared) folder, or a path in a pyarrow
    filesystem (an object store), which every worker writes its checkpoints to."""

    path: str
    filesystem: Any = None


@dataclass
class FitResult:
    checkpoint_dir: Path  # holds state.pt and, for a finished run, student/
    steps: int
    losses: list[float]
    downloaded: bool = False  # checkpoint_dir is a local copy of a remote checkpoint

    @property
    def student_dir(self) -> Path:
        return self.checkpoint_dir / STUDENT

    @property
    def final_loss(self) -> float:
        """Mean of the last tenth of the steps (at least one): one step's loss is noisy."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)


def fit(
    table: pa.Table,
    loop: LoopConfig,
    *,
    workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    storage: Storage,
    name: str,
    keep: int,
    on_step: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train on `table` (rows in step order, `workers` equal shares); block until done."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    share = table.num_rows // workers
    datasets = {
        f"shard_{rank}": ray.data.from_arrow(table.slice(rank * share, share))
        for rank in range(workers)
    }
    queue = Queue(actor_options={"num_cpus": 0}) if on_step else None
    stop = threading.Event()
    watcher = None
    if queue is not None and on_step is not None:
        watcher = threading.Thread(target=_watch, args=(queue, on_step, stop), daemon=True)
        watcher.start()
    if storage.filesystem is None:
        Path(storage.path).mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=replace(loop, progress=queue),
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
        result = trainer.fit()
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=5)
        if queue is not None:
            queue.shutdown()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    downloaded = storage.filesystem is not None
    if downloaded:  # the driver reads the last checkpoint from the store
        folder = Path(result.checkpoint.to_directory(tempfile.mkdtemp(prefix="germline-ckpt-")))
    else:
        folder = Path(result.checkpoint.path)
    import torch

    state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    if not (folder / STUDENT).is_dir():
        raise RuntimeError(f"the last checkpoint {folder} holds no finished student")
    steps, losses = int(state["step"]), [float(x) for x in state["losses"]]
    return FitResult(folder, steps, losses, downloaded)


def _watch(queue, on_step: Callable[[int, float], None], stop: threading.Event) -> None:
    """Relay rank 0's (step, loss) posts to the driver's progress callback."""
    from ray.util.queue import Empty

    while not stop.is_set():
        try:
            step, loss = queue.get(timeout=0.5)
        except Empty:
            continue
        except Exception:  # the queue actor is gone: the run is over
            return
        on_step(step, loss)
