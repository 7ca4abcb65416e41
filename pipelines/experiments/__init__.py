"""`germline run`: experiments, one subpackage per kind, found by the config's `kind`.

A kind registers its config model and its run function in `EXPERIMENTS` (see `panel/`, `owl/`
and `mnist_aux/`): a new kind is one new subpackage, and `germline run` finds it by name. A
config without `kind` is the owl experiment, the paper's single-teacher table (the main job is
`kind: panel`). Shared by every kind: `base` (the config's ids, the step lines), `reports` (a
run's folder, its lineage picture, finding a report again) and `resources` (where each step
runs); by the distillation kinds: `recipe` (their config) and `steps` (data, serving, probes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from germline.core import Registry
from germline.pipelines.experiments.base import Echo, ExperimentBase
from germline.storage import Lake

DEFAULT_KIND = "owl"


@dataclass(frozen=True)
class ExperimentKind:
    """A kind of experiment: its config model, and what runs it (returning the report's data,
    whose "path" is the report's Markdown file)."""

    config: type[ExperimentBase]
    run: Callable[[Lake, Any, Echo, bool], dict[str, Any]]


EXPERIMENTS: Registry[ExperimentKind] = Registry(
    "experiment kind", "germline.pipelines.experiments"
)


def kind_of(raw: dict[str, Any]) -> ExperimentKind:
    """The kind a config's `kind` key names (the owl experiment when it has none)."""
    return EXPERIMENTS.get(str(raw.get("kind", DEFAULT_KIND)))
