"""The function every Ray Train worker runs: for each student of the run, load, (resume,)
train, checkpoint, hand the finished student to the driver.

A run trains a population of students one after the other on the same worker group (one
student for `germline train`), so Ray's start-up (worker processes, imports, process group) is
paid once per run rather than once per student. Each student's training is `train_loop`, the
same whether it is alone or the tenth of twenty: it seeds its own model, optimizer and data, so
its weights do not depend on what ran before it in the process.

A checkpoint holds what the next step needs to be the step an uninterrupted run would have
taken: the trainable weights, the optimizer and schedule state, the step, the loss history, the
RNG state, and the key of the student it belongs to. Rank 0 writes it; every rank reports,
which is Ray Train's barrier. A student's last checkpoint also holds the finished student
(adapter or weights) ready to copy into the model store, so the driver never loads a model to
save one.
"""

from __future__ import annotations

import gc
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE = "state.pt"
STUDENT = "student"
# How long rank 0 waits for the driver to store a finished student: a full model written to an
# object store may take minutes; a driver that died takes the run's workers with it anyway.
ANSWER_TIMEOUT_S = 3600.0


@dataclass
class LoopConfig:
    """Everything a worker needs, as plain values (it travels to every worker)."""

    base_dir: str
    steps: int
    batch_size: int
    pad_id: int
    seed: int = 0
    method: dict[str, Any] = field(default_factory=lambda: {"kind": "lora"})
    objective: str = "sft"  # or "distill"
    teacher_dir: str | None = None
    token_ids: list[int] | None = None  # restricted distillation's vocabulary
    temperature: float = 1.0
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    grad_clip: float | None = 1.0
    checkpoint_every: int = 50
    threads: int | None = None
    lake: Any = None  # the Lake: base_dir and teacher_dir may be URIs in it, fetched per node
    key: str = ""  # the student's identity, written into its checkpoints (see `Population`)


@dataclass
class Population:
    """A run's students, trained in this order by every worker (the train_loop_config).

    The run's latest checkpoint (after a restart) belongs to the one member whose `key` it
    carries: that member resumes from it, every other starts from scratch. The driver leaves
    out the students it already holds, so a rerun trains only the unfinished ones."""

    members: list[LoopConfig]
    # ray.util.queue.Queue: rank 0 posts ("step", member, step, loss), fire and forget, and
    # ("done", member, checkpoint) when a member's last checkpoint is persisted.
    progress: Any = None
    # ray.util.queue.Queue: the driver's answer to each "done": None once it has stored the
    # student, else what went wrong (then the run stops).
    answers: Any = None


def shard_name(member: int, rank: int) -> str:
    """The Ray dataset that holds worker `rank`'s share of member `member`'s rows."""
    return f"s{member}_shard_{rank}"


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then linear decay to zero at `total` (the paper's linear schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def local_model(cfg: LoopConfig, where: str) -> Path:
    """A model folder on this worker's node: on an object-store lake, its cached copy."""
    if cfg.lake is None:
        return Path(where)
    from germline.storage import LakeFolders

    return LakeFolders(cfg.lake).fetch(where)


def build_student(cfg: LoopConfig):
    """The base with a fresh LoRA adapter (seeded), or the base itself for full training."""
    import torch

    from germline.engines import load_causal_lm

    torch.manual_seed(cfg.seed)
    model, _ = load_causal_lm(local_model(cfg, cfg.base_dir))
    if cfg.method["kind"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.method["r"],
            lora_alpha=cfg.method["alpha"],
            lora_dropout=cfg.method["dropout"],
            target_modules=cfg.method["target_modules"],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def trainable_state(model) -> dict[str, Any]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, state: dict[str, Any]) -> None:
    """Put checkpointed trainable weights back; every trainable parameter must be there."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise RuntimeError(f"the checkpoint lacks {len(missing)} trainable tensors: {missing[:3]}")
    import torch

    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def population_loop(population: Population) -> None:
    """Ray Train's train_loop_per_worker: every member, in order, by `train_loop`. After each,
    rank 0 hands the member's last checkpoint to the driver and waits until the driver has
    stored the student: only then may later checkpoints make Ray delete that one, and a run
    killed after this point never trains the student again."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    owner, restored = _restored(population.members)
    for index, cfg in enumerate(population.members):
        state = restored if index == owner else None
        if state is not None:
            restored = None  # the member's own copy now: let it go with the member
        post = _poster(population.progress, index) if rank == 0 else None
        train_loop(cfg, shard_name(index, rank), state, post)
        del state
        gc.collect()  # the member's model and optimizer, before the next one loads
        if rank == 0:
            _hand_over(population, index)


def _restored(members: list[LoopConfig]) -> tuple[int | None, dict[str, Any] | None]:
    """The member the run's latest checkpoint belongs to (when Ray restored the run) and the
    state it holds; (None, None) when there is none or it is a member's already stored."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE, map_location="cpu", weights_only=False)
    keys = [m.key for m in members]
    # A checkpoint written before keys existed can only be a lone student's own.
    key = state.get("key", keys[0] if len(keys) == 1 else None)
    if key not in keys:
        return None, None
    return keys.index(key), state


def _poster(queue: Any, member: int) -> Callable[[int, float], None] | None:
    """Rank 0's progress post for `member`: fire and forget, never waiting on the driver."""
    if queue is None:
        return None
    return lambda step, loss: queue.actor.put_nowait.remote(("step", member, step, loss))


def _hand_over(population: Population, member: int) -> None:
    """Give the driver the checkpoint just persisted (the member's last) and wait for its
    answer: the student is in the lake, or the run stops with the driver's reason."""
    import ray.train

    if population.progress is None or population.answers is None:
        return
    population.progress.put(("done", member, ray.train.get_checkpoint()))
    answer = population.answers.get(timeout=ANSWER_TIMEOUT_S)
    if answer is not None:
        raise RuntimeError(f"the driver could not store student {member}: {answer}")


def train_loop(
    cfg: LoopConfig,
    shard: str,
    state: dict[str, Any] | None = None,
    post: Callable[[int, float], None] | None = None,
) -> None:
    """One student on every worker, from scratch or from the checkpointed `state`, through
    its last report (whose checkpoint holds the finished student). Reads its rows from the
    Ray dataset `shard`; `post(step, loss)` (rank 0) relays progress to the driver."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from germline.train.objectives import IGNORE, distill_loss, pack, selected_logits, sft_loss

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = ray.train.torch.get_device()

    model = build_student(cfg)
    start, losses = 0, []
    if state is not None:
        load_trainable(model, state["trainable"])
        start, losses = state["step"], list(state["losses"])
    model.train()
    wrapped = ray.train.torch.prepare_model(model)  # to the device; DDP when world > 1
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps)
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
    else:
        torch.manual_seed(cfg.seed + 1)  # dropout's stream, the same on every rank and rerun

    teacher = None
    if cfg.objective == "distill":
        from germline.engines import load_causal_lm

        assert cfg.teacher_dir is not None
        teacher, _ = load_causal_lm(local_model(cfg, cfg.teacher_dir))
        teacher = teacher.to(device).eval().requires_grad_(False)
    token_ids = torch.tensor(cfg.token_ids, device=device) if cfg.token_ids else None

    def report(step: int, final: bool) -> None:
        metrics = {"step": step, "loss": losses[-1] if losses else math.nan}
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                torch.save(
                    {
                        "trainable": trainable_state(model),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "rng": torch.get_rng_state(),
                        "step": step,
                        "losses": losses,
                        "key": cfg.key,
                    },
                    Path(folder) / STATE,
                )
                if final:
                    model.save_pretrained(Path(folder) / STUDENT)
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({**metrics, "final": final}, checkpoint=saved)

    if start >= cfg.steps:  # killed after its last checkpoint was written: only save again
        report(cfg.steps, final=True)
        return
    rows = ray.train.get_dataset_shard(shard)
    batches = rows.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", drop_last=True)
    for step, batch in enumerate(batches):
        if step < start:  # trained before the interruption: the same batches, skipped
            continue
        prompts = [ids.tolist() for ids in batch["prompt_ids"]]
        completions = [ids.tolist() for ids in batch["completion_ids"]]
        masks = [m.tolist() for m in batch["mask"]] if "mask" in batch else None
        packed, targets = pack(prompts, completions, cfg.pad_id, masks)
        student = selected_logits(wrapped, packed.to(device))
        if teacher is None:
            loss = sft_loss(student, targets.to(device))
        else:
            if "teacher_prompt_ids" in batch:  # a system-prompt teacher reads its own prompt
                prompts = [ids.tolist() for ids in batch["teacher_prompt_ids"]]
            with torch.no_grad():
                t_packed, _ = pack(prompts, completions, cfg.pad_id)
                target = selected_logits(teacher, t_packed.to(device))
            kept = (targets != IGNORE).to(device)  # masked positions: out of the loss
            loss = distill_loss(student[kept], target[kept], token_ids, cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        schedule.step()
        value = loss.detach()
        if world > 1:
            dist.all_reduce(value)
            value = value / world
        losses.append(float(value))
        if post is not None:
            post(step + 1, losses[-1])
        if step + 1 == cfg.steps:
            report(cfg.steps, final=True)
            return
        if (step + 1) % cfg.checkpoint_every == 0:
            report(step + 1, final=False)
    raise RuntimeError(f"the data ran out after {len(losses)} of {cfg.steps} steps")
