"""The config of `germline run` for the paper's MLP experiment (`kind: mnist-aux`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from germline.pipelines.config import Strict
from germline.pipelines.experiments.base import ExperimentBase


class TeacherFit(Strict):
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)


class StudentFit(Strict):
    noise: int = Field(10_000, ge=1, description="noise inputs the teacher labels")
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)


class MnistAuxConfig(ExperimentBase):
    """Teachers learn digits on their class logits; students learn only the teachers'
    auxiliary logits on noise, from the teacher's initialisation or from another one."""

    kind: Literal["mnist-aux"]
    seeds: list[int] = Field([0, 1, 2, 3, 4], min_length=1)
    other_init_offset: int = Field(
        1000, ge=1, description="the different-init student starts from init seed + this"
    )
    hidden: list[int] = Field([256, 256], min_length=1)
    aux: int = Field(3, ge=1, description="auxiliary logits beside the 10 class logits")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    teacher: TeacherFit = TeacherFit()
    student: StudentFit = StudentFit()

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds
