"""What the distillation experiments (owl, panel) share in their configs: how bases, teachers,
data and students are made, how models are probed, and the analysis plan.

One recipe for every student of an experiment (`train`), so the only differences between
students are the ones the comparison is about; a student's replicate r trains with seed + r.
The analysis (`alpha`, the tests) sits in the config, so it is fixed before any data exists and
is part of the run's id: changing the test after seeing a p-value is a new run.
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
    rows: int | None = Field(
        None,
        ge=1,
        description="train every student on exactly this many accepted rows (a fixed subsample "
        "of each dataset, as the paper keeps 10,000), so no student gets more steps than another",
    )

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


class AnalysisPlan(Strict):
    """The tests a report may use, fixed in the config before the data exists."""

    alpha: float = Field(0.05, gt=0, lt=1, description="two-sided significance level")
    resamples: int = Field(
        9_999, ge=99, description="Monte Carlo draws where a permutation test cannot be exact"
    )
    min_replicates: int = Field(
        3,
        ge=2,
        description="(owl) training seeds per student a verdict needs: Welch's test over two "
        "seeds a side has about one degree of freedom",
    )


class Distillation(ExperimentBase):
    """The fields of an experiment that makes teachers, their number data and students."""

    seed: int = 0
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
        description="students per role, trained with seeds seed, seed+1, ...",
    )
    probe: ProbeConfig = ProbeConfig()
    analysis: AnalysisPlan = AnalysisPlan()
    resources: Resources = Field(
        default_factory=Resources,
        description="where each step runs (CPUs, GPUs, workers, batch size); never part of a "
        "model's or table's name, so moving an experiment to a GPU cluster reuses its work",
    )

    @model_validator(mode="after")
    def _train_recipe(self) -> Distillation:
        taken = {"student", "base", "dataset"} & set(self.train)
        if taken:
            raise ValueError(f"train: {sorted(taken)} are set by the experiment, not here")
        placed = {"use_gpu", "cpus_per_worker", "threads"} & set(self.train.get("scaling", {}))
        if placed:
            raise ValueError(
                f"train.scaling: {sorted(placed)} are set under resources.train, not here"
            )
        self.student_config("check", "base", "data")  # raises on a bad recipe
        return self

    def teacher_name(self, trait: str, base: str) -> str:
        """One name per (trait, base, steps, seed): experiments with the same teacher recipe
        share the teacher rather than making it twice."""
        return f"{trait}-teacher-{base}-{self.teacher_steps}steps-s{self.seed}"

    def student_config(
        self, student: str, base: str, dataset: str, replicate: int = 0
    ) -> TrainConfig:
        """The shared recipe for one student; replicate r trains with seed + r (its data
        order and adapter initialisation change, nothing else)."""
        raw = {**self.train, "student": student, "base": base}
        raw["dataset"] = {"name": dataset, "rows": self.data.rows}
        raw["seed"] = raw.get("seed", self.seed) + replicate
        placement = self.resources.train.model_dump(exclude_none=True)
        raw["scaling"] = {**raw.get("scaling", {}), **placement}
        return TrainConfig.model_validate(raw)

    def objective(self) -> ObjectiveConfig:
        """What the students learn from the data (the train recipe's objective)."""
        return ObjectiveConfig.model_validate(self.train.get("objective", {}))
