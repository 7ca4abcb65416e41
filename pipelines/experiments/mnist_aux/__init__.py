"""The paper's MLP experiment (`kind: mnist-aux`): do digits pass through auxiliary logits
on noise, and only to students that share the teacher's initialisation?

`config` is the experiment's config, `mlp` the network and its two trainings (torch), `run` the
steps (digits, initialisations, teachers, noise data and students in the lake and lineage),
`report` the per-seed table and verdict.
"""

from __future__ import annotations

from typing import Any

from germline.pipelines.experiments import EXPERIMENTS, ExperimentKind
from germline.pipelines.experiments.base import Echo
from germline.pipelines.experiments.mnist_aux.config import MnistAuxConfig
from germline.storage import Lake


def _run(lake: Lake, cfg: MnistAuxConfig, echo: Echo, verbose: bool) -> dict[str, Any]:
    from germline.pipelines.experiments.mnist_aux.run import run_mnist_aux

    return run_mnist_aux(lake, cfg, echo=echo)


EXPERIMENTS.register("mnist-aux")(ExperimentKind(MnistAuxConfig, _run))
