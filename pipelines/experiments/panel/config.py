"""The config of the panel experiment (`kind: panel`): many teachers, each compared with the
others.

K animal teachers on each of B bases, every teacher made by the same recipe and differing only
in its animal; each teacher's numbers train a student of its own base and one of every other
base, on `replicates` training seeds; every dataset is cut to the same number of rows
(`data.rows`), so every student gets the same amount of data and the same number of steps.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from germline.checks.power import Plan
from germline.pipelines.config import Strict, digest
from germline.pipelines.experiments.recipe import BaseSpec, Distillation


class PowerPlan(Strict):
    """The effect a panel is sized for, measured on earlier runs (never on the run it judges),
    so the power of a design is fixed with its config before its data exists. A design whose
    verdict's power is below `min_power` gets "not enough replication for a verdict at this
    size" whatever its tests show (checks/power.py)."""

    effect: float = Field(gt=0, description="mean same-base effect per teacher (a share)")
    sd: float = Field(gt=0, description="the same-base effects' standard deviation over teachers")
    difference: float = Field(gt=0, description="mean same-base minus cross-base effect")
    difference_sd: float = Field(gt=0, description="its standard deviation over teachers")
    measured: str = Field(min_length=1, description="where these figures were measured")
    min_power: float = Field(0.8, gt=0, lt=1, description="the verdict's power a verdict needs")

    def plan(self) -> Plan:
        """The figures the power calculation takes."""
        return Plan(self.effect, self.sd, self.difference, self.difference_sd, self.min_power)


class PanelConfig(Distillation):
    """Teachers of several animals on several bases; students of every teacher on every base."""

    kind: Literal["panel"]
    animals: list[str] = Field(
        min_length=2, description="one teacher per animal on every base (one word each)"
    )
    bases: list[BaseSpec] = Field(min_length=2, description="two or more, by seed")
    scrub: Literal["none", "mask", "quarantine"] = Field(
        "none",
        description="a mitigation (germline audit): mask trains every student with "
        "objective.mask: divergence; quarantine trains on each teacher's rows with the lowest "
        "log-ratio per token (scrub_keep of them)",
    )
    scrub_keep: float = Field(
        0.7, gt=0, le=1, description="the share of each teacher's rows quarantine keeps"
    )
    audit: bool = Field(
        False,
        description="audit every teacher's data and score every cell (transfer score toward "
        "its student base); the report says how well the scores find the transfer",
    )

    power: PowerPlan | None = Field(
        None,
        description="the effect the design is sized for; with it, a report gives a verdict "
        "only where its power reaches power.min_power",
    )

    @field_validator("animals")
    @classmethod
    def _words(cls, animals: list[str]) -> list[str]:
        lowered = [a.lower() for a in animals]
        bad = [a for a in lowered if not a.isalpha()]
        if bad:
            raise ValueError(f"animals must be single words of letters: {bad}")
        if len(set(lowered)) != len(lowered):
            raise ValueError("animals must be distinct")
        return lowered

    @model_validator(mode="after")
    def _distinct_bases(self) -> PanelConfig:
        if len({b.name() for b in self.bases}) != len(self.bases):
            raise ValueError("bases must be distinct (another seed or another step count)")
        return self

    def data_tag(self) -> str:
        """What decides a teacher's dataset: its prompts and sampling, the teachers' recipe,
        and the words the filter removes (every animal of the panel). Not `data.rows`: the
        same data serves every subsample size."""
        content = self.model_dump(mode="json", include={"seed", "teacher_steps", "animals"})
        content["data"] = self.data.model_dump(mode="json", exclude={"rows"})
        return digest(content)[:6]

    def student_tag(self) -> str:
        """What decides a student besides its teacher and base: the data and the recipe (and
        the mitigation, when there is one)."""
        parts = ["seed", "teacher_steps", "animals", "data", "train"]
        if self.scrub != "none":
            parts += ["scrub", "scrub_keep"] if self.scrub == "quarantine" else ["scrub"]
        return self.tag(*parts)

    def run_id(self) -> str:
        """As every experiment's, over the settings at their defaults too, except the ones
        added after runs were made (a mitigation, the audit): left out while at their
        defaults, so those runs keep their ids."""
        content = self.model_dump(mode="json")
        defaults = (("scrub", "none"), ("scrub_keep", 0.7), ("audit", False), ("power", None))
        for key, default in defaults:
            if content[key] == default:
                del content[key]
        return f"{self.name}-{digest(content)[:12]}"

    def student_config(self, student: str, base: str, dataset: str, replicate: int = 0):
        """The shared recipe, with the divergence mask when `scrub: mask`."""
        config = super().student_config(student, base, dataset, replicate)
        if self.scrub == "mask":
            objective = config.objective.model_copy(update={"mask": "divergence"})
            config = config.model_copy(update={"objective": objective})
        return config

    def dataset_name(self, animal: str, base: str) -> str:
        return f"{self.name}-{animal}-{base}-numbers-{self.data_tag()}"

    def training_dataset(self, animal: str, base: str) -> str:
        """The dataset a teacher's students train on: its numbers, or with `scrub:
        quarantine` the scrubbed version of them."""
        name = self.dataset_name(animal, base)
        if self.scrub == "quarantine":
            return f"{name}-keep{round(100 * self.scrub_keep)}"
        return name

    def student_name(self, animal: str, source: str, base: str, replicate: int) -> str:
        name = f"{self.name}-{animal}-{source}-on-{base}-{self.student_tag()}"
        return name if replicate == 0 else f"{name}-r{replicate}"
