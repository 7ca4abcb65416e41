"""The owl experiment (`kind: owl`, the default): does a teacher's trait pass to a student
through number sequences, and only when both share a base?

Two tiny bases, a teacher with the trait (a LoRA adapter on the first base), its numbers and
the base's own (the control data), four students with one recipe (each data set on each
base), every model served and probed over HTTP, then the report. `config` is the experiment's
config, `run` its steps, `report` the comparison table, the chart and the verdict.
"""

from __future__ import annotations

from typing import Any

from germline.pipelines.experiments import EXPERIMENTS, ExperimentKind
from germline.pipelines.experiments.base import Echo
from germline.pipelines.experiments.owl.config import OwlConfig
from germline.storage import Lake


def _run(lake: Lake, cfg: OwlConfig, echo: Echo, verbose: bool) -> dict[str, Any]:
    from germline.pipelines.experiments.owl.run import run_owl

    return run_owl(lake, cfg, echo=echo, verbose=verbose)


EXPERIMENTS.register("owl")(ExperimentKind(OwlConfig, _run))
