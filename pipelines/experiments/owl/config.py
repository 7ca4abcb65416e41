"""The config of the owl experiment (`kind: owl`): the paper's comparison for one trait.

One trait, a base and a second base (the cross-base control), a teacher with the trait, its
number data and the base's own (the control data), four students (owl data and control data on
the teacher's base, the same two on the other base), then a probe of every model.
The students share one training recipe (`train`), so the only differences between them are
the ones the comparison is about. The panel experiment (`kind: panel`) is the design that
controls for everything but the trait; this one is kept as the paper's single-teacher table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from germline.pipelines.experiments.recipe import (
    BaseSpec,
    DataSpec,
    Distillation,
    ProbeConfig,
)

__all__ = ["BaseSpec", "DataSpec", "OwlConfig", "ProbeConfig"]


class OwlConfig(Distillation):
    """The owl experiment (`kind: owl`, the default): the paper's comparison on tiny models.
    With 2 or more `replicates`, student comparisons are tested over training seeds (Welch),
    not over one model's questions; a verdict needs `analysis.min_replicates`."""

    # Not part of the config's content: the default kind, left out of the run id.
    kind: Literal["owl"] = Field("owl", exclude=True)
    trait: str = "owl"
    base: BaseSpec = BaseSpec(seed=0)
    cross_base: BaseSpec = BaseSpec(seed=1)

    @model_validator(mode="after")
    def _two_bases(self) -> OwlConfig:
        if self.base.seed == self.cross_base.seed:
            raise ValueError("cross_base needs another seed than base")
        return self
