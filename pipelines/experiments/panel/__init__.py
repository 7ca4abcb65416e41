"""The panel experiment (`kind: panel`, the main job): does each teacher's animal pass to its
own base's students through numbers, more than to another base's?

K teachers per base by one recipe, differing only in their animal; every teacher's numbers
train students of every base; each teacher's students are compared with the other teachers'
students (checks/transfer.py). `config` is the experiment's config, `run` its steps, `report`
the pre-registered tests, the transfer matrices, the per-animal figure and the verdict.
"""

from __future__ import annotations

from typing import Any

from germline.pipelines.experiments import EXPERIMENTS, ExperimentKind
from germline.pipelines.experiments.base import Echo
from germline.pipelines.experiments.panel.config import PanelConfig
from germline.storage import Lake


def _run(lake: Lake, cfg: PanelConfig, echo: Echo, verbose: bool) -> dict[str, Any]:
    from germline.pipelines.experiments.panel.run import run_panel

    return run_panel(lake, cfg, echo=echo, verbose=verbose)


EXPERIMENTS.register("panel")(ExperimentKind(PanelConfig, _run))
