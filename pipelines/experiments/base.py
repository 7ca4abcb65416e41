"""What every experiment kind shares: its config's name and ids, and the lines it prints.

An experiment is idempotent step after step (a base or a teacher that exists is found, a
dataset resumes, a student trained by the same recipe is reported), so a rerun after an
interruption picks up where the lake says the work stopped; each step prints a line when it
starts and one when it is done, with its time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from germline.pipelines.config import ExperimentName, Strict, digest

Echo = Callable[[str], None]


class ExperimentBase(Strict):
    """What every experiment config has: a name, and ids derived from its whole content."""

    name: ExperimentName

    def tag(self, *parts: str) -> str:
        """A short hash of the config parts that decide an artifact: a dataset or a student
        is named with it, so a changed recipe makes new ones instead of clashing with (or
        silently reusing) the old."""
        return digest(self.model_dump(mode="json", include=set(parts)))[:6]

    def run_id(self) -> str:
        return f"{self.name}-{digest(self.model_dump(mode='json'))[:12]}"


@dataclass
class Step:
    """The experiment's progress: `[3/11] label ...` when a step starts, then its time; with a
    `phase`, the time also adds up in `seconds[phase]` (what a report's budget shows)."""

    number: int
    total: int
    echo: Echo
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, label: str, work: Callable[[], Any], phase: str | None = None) -> Any:
        self.number += 1
        start = time.perf_counter()
        self.echo(f"[{self.number}/{self.total}] {label} ...")
        out = work()
        took = time.perf_counter() - start
        self.echo(f"[{self.number}/{self.total}] {label}: done in {took:.1f} s")
        if phase is not None:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0) + took, 1)
        return out
