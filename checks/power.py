"""How likely a panel is to reach its verdict when the effect is real, and how many teachers a
wanted power needs: figures a design is sure of, so a plan sized by them is not too small.

A panel's verdict ("signature") needs two tests positive and below alpha: the primary
(permutation over teacher labels, on the same-base cells) and the difference (sign-flip over
teachers, same-base minus cross-base). Each test's power is taken as a one-sample t-test's on
the teachers' effects (the noncentral t, counting only the positive tail: a significant
negative effect is no signature), for the effect and scatter the plan assumes.
- For the sign-flip test that is its power: a randomization test of a mean has the t-test's
  power asymptotically, and on constructed panels of 8 and 10 teachers the two agree within
  0.05 (tests/test_power.py).
- For the permutation test it is a floor: its reference set is built from every teacher's
  share of every animal, not only the teacher's own, so it judges the mean against a finer
  null than the t-test does, and on the same constructed panels its power is up to 0.17
  above the t-test's. How much above depends on how the effect scatters between teachers,
  which a plan does not pin down, so no figure above the floor is claimed.
- The verdict: the two tests share their same-base cells, so their outcomes go together, and
  the verdict's power is at least the product of the two floors.
Plans are sized by that product. The effect and scatter come from runs made before (the
exploration), never from the run being judged, so a report's power is fixed with its config
before its data exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

MAX_CELLS = 100_000  # the search for a design's size gives up here


def t_power(effect: float, sd: float, n: int, alpha: float) -> float:
    """P(a two-sided one-sample t-test at `alpha` finds a positive mean) when the `n` values
    are normal with mean `effect` and standard deviation `sd` (the noncentral t)."""
    if n < 2:
        return 0.0
    if sd <= 0:
        raise ValueError("the scatter (sd) must be above 0")
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, effect * math.sqrt(n) / sd))


@dataclass(frozen=True)
class Power:
    """A design's power for a plan's effect, as floors: each test's, and the verdict's."""

    cells: int  # teachers (same-base cells) in the design
    alpha: float
    primary: float
    difference: float

    @property
    def verdict(self) -> float:
        """The verdict's power the design is sure of: both tests' floors multiplied."""
        return self.primary * self.difference

    def to_dict(self) -> dict[str, float | int]:
        return {
            "cells": self.cells,
            "alpha": self.alpha,
            "primary": round(self.primary, 4),
            "difference": round(self.difference, 4),
            "verdict": round(self.verdict, 4),
        }


def design_power(effect: float, sd: float, difference: float, difference_sd: float,
                 cells: int, alpha: float, min_p: float = 0.0) -> Power:  # fmt: skip
    """The power of a panel with `cells` teachers when each teacher's same-base effect has mean
    `effect` and scatter `sd`, and its same-minus-cross difference mean `difference` and
    scatter `difference_sd`. A design whose exact tests cannot give p below alpha (`min_p`,
    the larger of the two tests' smallest attainable p) has power 0."""
    if min_p >= alpha:
        return Power(cells, alpha, 0.0, 0.0)
    return Power(
        cells,
        alpha,
        t_power(effect, sd, cells, alpha),
        t_power(difference, difference_sd, cells, alpha),
    )


def cells_for(effect: float, sd: float, difference: float, difference_sd: float,
              alpha: float, target: float) -> int | None:  # fmt: skip
    """The fewest teachers for which the verdict's power (the product) reaches `target`; None
    where more than MAX_CELLS would be needed (an effect too small to plan for)."""
    if not 0 < target < 1:
        raise ValueError("the target power must be between 0 and 1")
    if effect <= 0 or difference <= 0:
        raise ValueError("a plan is sized for a positive effect and difference")

    def enough(n: int) -> bool:
        return design_power(effect, sd, difference, difference_sd, n, alpha).verdict >= target

    high = 2
    while not enough(high):  # power grows with n: double, then bisect
        high *= 2
        if high > MAX_CELLS:
            return None
    low = high // 2
    while high - low > 1:  # low is too few, high is enough
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


@dataclass(frozen=True)
class Plan:
    """The effect a design is sized for (measured before the run) and the power its verdict
    needs: what `analyse` judges a panel's size by."""

    effect: float
    sd: float
    difference: float
    difference_sd: float
    min_power: float = 0.8

    def power(self, cells: int, alpha: float, min_p: float = 0.0) -> Power:
        return design_power(self.effect, self.sd, self.difference, self.difference_sd,
                            cells, alpha, min_p)  # fmt: skip

    def cells_for(self, alpha: float, target: float) -> int | None:
        return cells_for(self.effect, self.sd, self.difference, self.difference_sd, alpha,
                         target)  # fmt: skip
