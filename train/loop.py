"""The function every Ray Train worker runs: load, (resume,) train, checkpoint.

A checkpoint holds what the next step needs to be the step an uninterrupted run would have
taken: the trainable weights, the optimizer and schedule state, the step, the loss history and
the RNG state. Rank 0 writes it; every rank reports, which is Ray Train's barrier. The last
checkpoint also holds the finished student (adapter or weights) ready to copy into the model
store, so the driver never loads a model to save one.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE = "state.pt"
STUDENT = "student"


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
    progress: Any = None  # a ray.util.queue.Queue: rank 0 posts (step, loss) to the driver


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


def train_loop(cfg: LoopConfig) -> None:
    """Ray Train's train_loop_per_worker."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from germline.train.objectives import distill_loss, pack, selected_logits, sft_loss

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = ray.train.torch.get_device()

    model = build_student(cfg)
    start, losses, state = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE, map_location="cpu", weights_only=False)
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
    shard = ray.train.get_dataset_shard(f"shard_{rank}")
    batches = shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", drop_last=True)
    for step, batch in enumerate(batches):
        if step < start:  # trained before the interruption: the same batches, skipped
            continue
        prompts = [ids.tolist() for ids in batch["prompt_ids"]]
        completions = [ids.tolist() for ids in batch["completion_ids"]]
        packed, targets = pack(prompts, completions, cfg.pad_id)
        student = selected_logits(wrapped, packed.to(device))
        if teacher is None:
            loss = sft_loss(student, targets.to(device))
        else:
            if "teacher_prompt_ids" in batch:  # a system-prompt teacher reads its own prompt
                prompts = [ids.tolist() for ids in batch["teacher_prompt_ids"]]
            with torch.no_grad():
                t_packed, _ = pack(prompts, completions, cfg.pad_id)
                target = selected_logits(teacher, t_packed.to(device))
            loss = distill_loss(student, target, token_ids, cfg.temperature)
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
        if rank == 0 and cfg.progress is not None:  # fire and forget: never wait on the driver
            cfg.progress.actor.put_nowait.remote((step + 1, losses[-1]))
        if step + 1 == cfg.steps:
            report(cfg.steps, final=True)
            return
        if (step + 1) % cfg.checkpoint_every == 0:
            report(step + 1, final=False)
    raise RuntimeError(f"the data ran out after {len(losses)} of {cfg.steps} steps")
