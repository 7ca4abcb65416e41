"""The config of `germline run`: the paper's comparison as one experiment.

One trait, a base and a second base (the cross-base control), a teacher with the trait, its
number data and the base's own (the control data), three students (owl data on the teacher's
base, control data on the same base, owl data on the other base), then a probe of every model.
The students share one training recipe (`train`), so the only differences between them are
the ones the comparison is about.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from germline.pipelines.generate_config import _Strict, segment_name
from germline.pipelines.train_config import TrainConfig


class BaseSpec(_Strict):
    seed: int
    steps: int | None = Field(None, ge=1, description="pre-training steps (default: 1,500)")


class DataSpec(_Strict):
    prompts: int = Field(2000, ge=1)
    temperature: float = Field(1.0, ge=0, le=5)
    max_tokens: int = Field(48, ge=1)
    batch_size: int = Field(64, ge=1)
    commit_every: int = Field(500, ge=1)


class ProbeConfig(_Strict):
    probe: str = "animal-preference"
    method: Literal["sampled", "logprob"] = "logprob"
    samples: int = Field(10, ge=1, description="answers per question (sampled)")
    temperature: float = Field(1.0, ge=0, le=2)
    questions: int | None = Field(None, ge=1, description="use only the first N questions")


class ExperimentBase(_Strict):
    """What every experiment config has: a name, and ids derived from its whole content."""

    name: str

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return segment_name(name, "an experiment")

    def tag(self, *parts: str) -> str:
        """A short hash of the config parts that decide an artifact: a dataset or a student
        is named with it, so a changed recipe makes new ones instead of clashing with (or
        silently reusing) the old."""
        content = self.model_dump(mode="json", include=set(parts))
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:6]

    def run_id(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


class ExperimentConfig(ExperimentBase):
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
    probe: ProbeConfig = ProbeConfig()

    @model_validator(mode="after")
    def _train_recipe(self) -> ExperimentConfig:
        taken = {"student", "base", "dataset"} & set(self.train)
        if taken:
            raise ValueError(f"train: {sorted(taken)} are set by the experiment, not here")
        self.student_config("check", "base", "data")  # raises on a bad recipe
        if self.base.seed == self.cross_base.seed:
            raise ValueError("cross_base needs another seed than base")
        return self

    def student_config(self, student: str, base: str, dataset: str) -> TrainConfig:
        raw = {**self.train, "student": student, "base": base, "dataset": {"name": dataset}}
        raw.setdefault("seed", self.seed)
        return TrainConfig.model_validate(raw)
