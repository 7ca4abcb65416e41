"""The config of `germline run`: the paper's comparison as one experiment.

One trait, a base and a second base (the cross-base control), a teacher with the trait, its
number data and the base's own (the control data), four students (owl data and control data on
the teacher's base, the same two on the other base), then a probe of every model.
The students share one training recipe (`train`), so the only differences between them are
the ones the comparison is about.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from germline.pipelines.config import Strict
from germline.pipelines.experiments.base import ExperimentBase
from germline.pipelines.experiments.resources import Resources
from germline.pipelines.finetune.config import ObjectiveConfig, TrainConfig


class BaseSpec(Strict):
    seed: int
    steps: int = Field(1500, ge=1, description="pre-training steps")

    def name(self) -> str:
        """tiny-base-sSEED, with the steps when they are not the default: a base is found by
        name on a rerun, so two budgets must not share one."""
        return f"tiny-base-s{self.seed}" + ("" if self.steps == 1500 else f"-{self.steps}steps")


class DataSpec(Strict):
    prompts: int = Field(2000, ge=1)
    temperature: float = Field(1.0, ge=0, le=5)
    max_tokens: int = Field(48, ge=1)
    commit_every: int = Field(500, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "batch_size" in raw:
            raise ValueError("batch_size moved to resources.generate.batch_size")
        return raw


class ProbeConfig(Strict):
    probe: str = "animal-preference"
    method: Literal["sampled", "logprob"] = "logprob"
    samples: int = Field(10, ge=1, description="answers per question (sampled)")
    temperature: float = Field(1.0, ge=0, le=2)
    questions: int | None = Field(None, ge=1, description="use only the first N questions")


class OwlConfig(ExperimentBase):
    """The owl experiment (`kind: owl`, the default): the paper's comparison on tiny models."""

    # Not part of the config's content: the default kind, left out of the run id.
    kind: Literal["owl"] = Field("owl", exclude=True)
    seed: int = 0
    trait: str = "owl"
    base: BaseSpec = BaseSpec(seed=0)
    cross_base: BaseSpec = BaseSpec(seed=1)
    teacher_steps: int = Field(300, ge=1)
    data: DataSpec = DataSpec()
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="a train config without student, base and dataset (see train-owl.yaml)",
    )
    replicates: int = Field(
        1,
        ge=1,
        le=8,
        description="students per role, trained with seeds seed, seed+1, ...: with 2 or more, "
        "student comparisons are tested over training seeds (a t-test), not over one "
        "model's questions",
    )
    probe: ProbeConfig = ProbeConfig()
    resources: Resources = Field(
        default_factory=Resources,
        description="where each step runs (CPUs, GPUs, workers, batch size); never part of a "
        "model's or table's name, so moving an experiment to a GPU cluster reuses its work",
    )

    @model_validator(mode="after")
    def _train_recipe(self) -> OwlConfig:
        taken = {"student", "base", "dataset"} & set(self.train)
        if taken:
            raise ValueError(f"train: {sorted(taken)} are set by the experiment, not here")
        placed = {"use_gpu", "cpus_per_worker", "threads"} & set(self.train.get("scaling", {}))
        if placed:
            raise ValueError(
                f"train.scaling: {sorted(placed)} are set under resources.train, not here"
            )
        self.student_config("check", "base", "data")  # raises on a bad recipe
        if self.base.seed == self.cross_base.seed:
            raise ValueError("cross_base needs another seed than base")
        return self

    def teacher_name(self, base: str) -> str:
        return f"{self.trait}-teacher-{base}-{self.teacher_steps}steps-s{self.seed}"

    def student_config(
        self, student: str, base: str, dataset: str, replicate: int = 0
    ) -> TrainConfig:
        """The shared recipe for one student; replicate r trains with seed + r (its data
        order and adapter initialisation change, nothing else)."""
        raw = {**self.train, "student": student, "base": base, "dataset": {"name": dataset}}
        raw["seed"] = raw.get("seed", self.seed) + replicate
        placement = self.resources.train.model_dump(exclude_none=True)
        raw["scaling"] = {**raw.get("scaling", {}), **placement}
        return TrainConfig.model_validate(raw)

    def objective(self) -> ObjectiveConfig:
        """What the students learn from the data (the train recipe's objective)."""
        return ObjectiveConfig.model_validate(self.train.get("objective", {}))
