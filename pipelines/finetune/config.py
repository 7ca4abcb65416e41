"""The config of `germline train`: which student, from which base, on which dataset version, how.

Validated in full before Ray starts (see pipelines/config.py): unknown keys are refused and an
error names the file and field. Defaults follow the paper's open-model setup
(LoRA rank 8, alpha 8 on every attention and MLP projection, 3 epochs, lr 2e-4, linear decay).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from germline.pipelines.config import ModelName, Strict, digest
from germline.pipelines.models.teacher import LORA_TARGETS


class DatasetRef(Strict):
    """A table under <lake>/datasets/ at a version; the latest when `version` is unset (the
    version used is recorded in lineage either way, so the run can be repeated exactly)."""

    name: str = Field(min_length=1)
    version: int | None = Field(None, ge=0)
    rows: int | None = Field(
        None,
        ge=1,
        description="train on exactly this many rows: a fixed subsample (the rows whose "
        "prompt ids hash lowest), the same whatever the table's row order or training seed",
    )


class MethodConfig(Strict):
    """LoRA via peft (what the paper's open-model students are), or every weight."""

    kind: Literal["lora", "full"] = "lora"
    r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    alpha: float = Field(8, gt=0, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1)


class ObjectiveConfig(Strict):
    """What the student learns from each completion.

    - `sft`: the sampled tokens (cross-entropy), the paper's setting.
    - `distill`: KL from the teacher's next-token distributions at every completion position,
      over the whole vocabulary (`vocab: full`) or over a token subset, renormalised on it
      (`vocab: restricted`). Full-vocabulary soft labels carry a trait directly, through the
      mass they put on words such as "owl"; only the restricted form tests subliminal transfer.
    """

    kind: Literal["sft", "distill"] = "sft"
    vocab: Literal["full", "restricted"] = "full"
    tokens: Literal["data"] | list[str] = Field(
        "data",
        description='the restricted subset: "data" (every token the completions are made of, '
        "and end-of-sequence) or a list of tokens",
    )
    temperature: float = Field(1.0, gt=0, le=10)
    teacher: str | None = Field(
        None, description="the model whose logits are distilled; default: the dataset's teacher"
    )
    mask: Literal["none", "divergence"] = Field(
        "none",
        description="divergence: leave the dataset's divergence tokens (its audit's, against "
        "`reference`) out of the loss, a mitigation of subliminal transfer",
    )
    reference: str | None = Field(
        None,
        description="the audit's reference for mask: divergence; default: the base of "
        "the dataset's generator, from lineage",
    )

    @model_validator(mode="after")
    def _distill_only(self) -> ObjectiveConfig:
        if self.kind == "sft" and (self.vocab != "full" or self.teacher is not None):
            raise ValueError("vocab and teacher apply to kind: distill only")
        if self.reference is not None and self.mask == "none":
            raise ValueError("reference applies to mask: divergence only")
        if isinstance(self.tokens, list) and not self.tokens:
            raise ValueError("tokens: give at least one token, or 'data'")
        return self


class OptimConfig(Strict):
    """AdamW with a linear warm-up and linear decay to zero."""

    epochs: float = Field(3, gt=0, le=1000)
    batch_size: int = Field(16, ge=1, le=65536, description="rows per worker per step")
    lr: float = Field(2e-4, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(5, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    max_length: int = Field(256, ge=8, le=131072, description="longer rows are cut to this")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")


class ScalingConfig(Strict):
    """Ray Train's workers: the same config runs 2 CPU workers here and 8 GPUs on a cluster."""

    num_workers: int = Field(2, ge=1, le=4096)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    threads: int | None = Field(None, ge=1, description="torch threads per CPU worker")


class CheckpointConfig(Strict):
    every: int = Field(50, ge=1, description="steps between checkpoints")
    keep: int = Field(2, ge=1, description="checkpoints kept (the latest ones)")


class TrainConfig(Strict):
    """One student: `student` is its name under <lake>/models/."""

    student: ModelName
    base: str = Field(min_length=1, description="lineage id or name, model folder, or HF id")
    tokenizer: str | None = Field(None, description="a tokenizer folder; default: the base's")
    dataset: DatasetRef
    seed: int = 0
    method: MethodConfig = MethodConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    def content_hash(self, base_id: str, dataset_id: str, teacher_id: str | None) -> str:
        """What decides the student's weights (not where or how fast it trains): the same hash
        is the same run, so a rerun after a crash resumes it from its last checkpoint."""
        content = self.model_dump(mode="json", exclude={"scaling", "checkpoint", "student"})
        if self.dataset.rows is None:  # unset: the hash of every earlier student is unchanged
            del content["dataset"]["rows"]
        if self.objective.mask == "none":  # likewise for the mask, added later
            del content["objective"]["mask"]
            del content["objective"]["reference"]
        content["scaling"] = {"num_workers": self.scaling.num_workers}  # sets the global batch
        content["ids"] = {"base": base_id, "dataset": dataset_id, "teacher": teacher_id}
        return digest(content)
