"""The panel's statistics: did students move toward their own teacher's trait, and only on the
teacher's base?

A panel has K teachers per base, made by one recipe and differing only in their trait (an
animal). Each teacher's data trains students of its own base (the same-base arm) and of every
other base (the cross-base arm). The controls are the other teachers: for a teacher with
animal A, its students' share of A is compared with the share of A among the students of the
*other* teachers of the same source base, trained on the same student base by the same recipe
on the same amount of data. That difference is the teacher's effect (one number per teacher
and student base: a cell). What "trained on a fine-tuned teacher's numbers" does by itself is
common to every teacher, so it cancels; only the trait differs.

The tests, fixed before any data exists (a report states them as its analysis plan):
- **primary**: a permutation test over teacher labels. Under "the trait does not matter", the
  teachers of one source base are exchangeable, so their animals can be reassigned among them;
  the statistic (the mean effect over all same-base cells) is recomputed for every
  reassignment, exactly where their number allows, else for random ones with
  p = (b + 1) / (m + 1). Two-sided; its null mean is exactly 0.
- **cross_base**: the same test on the cross-base arm.
- **difference**: same-base effect minus cross-base effect, per teacher (paired: the same data
  trained into both bases), with a sign-flip test. The verdict needs the same-base effect
  significant and positive *and* this difference significant and positive: a non-significant
  cross-base test alone is not evidence that the cross-base arm did not move.
- **intervals**: t-intervals over the cells (teachers), the unit the tests resample.
- **replication**: a design whose tests cannot reach p < alpha whatever the data (too few
  teachers) gets "not enough replication for a verdict", never a verdict; so does one whose
  power for the effect its plan assumes (`checks.power.Plan`, measured on earlier runs) is
  below the plan's minimum: at that size a verdict is one a seed can flip.

What the tests cannot tell apart: an effect of the animal itself from one of anything else that
differs between teachers (their adapters' training seeds are the same, their data is their
own): the teachers' recipe is shared so the trait is the only designed difference.
Nor can the primary test alone tell a mean effect from a scatter of effects: its null is that
the animal matters to no teacher, so teachers whose students move by different amounts that
average 0 give it small p-values too (tests/test_transfer_stats.py measures it); the sign-flip
test of the differences keeps its level there, and the verdict needs both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import permutations
from typing import Any

import numpy as np

from germline.checks.power import Plan, Power
from germline.checks.stats import sign_flip, t_interval

MAX_EXACT = 200_000  # label reassignments enumerated exactly; beyond, Monte Carlo


@dataclass(frozen=True)
class Cell:
    """One teacher's students on one student base: the mean over training seeds of each
    probed animal's share (`shares`), with each seed's shares kept for the report."""

    teacher: str
    animal: str
    source: str  # the teacher's base
    student_base: str
    shares: Mapping[str, float]
    seeds: Sequence[Mapping[str, float]] = ()
    students: Sequence[str] = ()  # the models, one per seed

    @property
    def same_base(self) -> bool:
        return self.source == self.student_base


@dataclass(frozen=True)
class Test:
    """One pre-registered test's result."""

    effect: float
    low: float
    high: float
    p: float
    test: str
    cells: int
    positive: int  # cells with an effect above 0
    min_p: float  # the smallest p this design can give, whatever the data

    def to_dict(self) -> dict[str, Any]:
        """The report's shape: the interval as one pair."""
        out = asdict(self)
        out["interval"] = [out.pop("low"), out.pop("high")]
        return out


@dataclass(frozen=True)
class Analysis:
    primary: Test
    cross_base: Test
    difference: Test
    verdict: str
    reading: str
    alpha: float
    power: Power | None = None  # the design's power for the plan's effect, with a plan


def _blocks(cells: Sequence[Cell], same: bool) -> list[tuple[list[str], np.ndarray]]:
    """Per source base (a block of exchangeable teachers): its teachers, and the matrix
    D[t, j] = share of teacher j's animal among teacher t's students minus its mean share among
    the other teachers' students, averaged over the student bases of the arm."""
    out = []
    for source in sorted({c.source for c in cells}):
        arm = [c for c in cells if c.source == source and c.same_base == same]
        if not arm:
            continue
        teachers = sorted({c.teacher for c in arm})
        animal = {c.teacher: c.animal for c in arm}
        mats = []
        for base in sorted({c.student_base for c in arm}):
            by_teacher = {c.teacher: c for c in arm if c.student_base == base}
            if set(by_teacher) != set(teachers):
                raise ValueError(f"student base {base} lacks students of some of {teachers}")
            k = len(teachers)
            s = np.array([[by_teacher[t].shares[animal[j]] for j in teachers] for t in teachers])
            others = (s.sum(axis=0, keepdims=True) - s) / (k - 1)
            mats.append(s - others)
        out.append((teachers, np.mean(mats, axis=0)))
    return out


def _permutation_sums(d: np.ndarray) -> np.ndarray:
    """sum_t D[t, pi(t)] for every permutation pi of the block's teachers."""
    k = len(d)
    rows = np.arange(k)
    return np.array([d[rows, list(p)].sum() for p in permutations(range(k))])


def label_permutation(blocks: Sequence[np.ndarray], resamples: int = 9_999,
                      seed: int = 0) -> tuple[float, float, float, str]:  # fmt: skip
    """(statistic, two-sided p, smallest attainable p, description) of the test over teacher
    labels: the statistic is the mean diagonal of the blocks' D matrices, the reference set is
    every reassignment of labels within each block."""
    n_cells = sum(len(d) for d in blocks)
    observed = sum(float(np.trace(d)) for d in blocks) / n_cells
    total = math.prod(math.factorial(len(d)) for d in blocks)
    if total <= MAX_EXACT:
        sums = np.zeros(1)
        for d in blocks:
            sums = np.add.outer(sums, _permutation_sums(d)).ravel()
        p = float((np.abs(sums / n_cells) >= abs(observed) - 1e-12).mean())
        return observed, p, 1 / total, f"permutation test over teacher labels (exact, {total})"
    rng = np.random.default_rng(seed)
    stats = np.zeros(resamples)
    for d in blocks:
        rows = np.arange(len(d))
        stats += np.array([d[rows, rng.permutation(len(d))].sum() for _ in range(resamples)])
    extreme = int((np.abs(stats / n_cells) >= abs(observed) - 1e-12).sum())
    return (observed, (extreme + 1) / (resamples + 1), 1 / (resamples + 1),
            f"permutation test over teacher labels (Monte Carlo, {resamples})")  # fmt: skip


def _arm(cells: Sequence[Cell], same: bool, resamples: int) -> tuple[Test, dict[str, float]]:
    blocks = _blocks(cells, same)
    effects = {t: float(d[i, i]) for teachers, d in blocks for i, t in enumerate(teachers)}
    stat, p, min_p, how = label_permutation([d for _, d in blocks], resamples)
    low, high = t_interval(list(effects.values()))
    positive = sum(v > 0 for v in effects.values())
    return Test(stat, low, high, p, how, len(effects), positive, min_p), effects


def analyse(cells: Sequence[Cell], alpha: float = 0.05, resamples: int = 9_999,
            plan: Plan | None = None) -> Analysis:  # fmt: skip
    """The three pre-registered tests over a panel's cells, and the verdict they allow (with a
    `plan`, only where the design's power for the plan's effect reaches its minimum)."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    for source in {c.source for c in cells}:
        teachers = {c.teacher for c in cells if c.source == source}
        if len(teachers) < 2:
            raise ValueError(
                f"base {source} has {len(teachers)} teacher: the controls are the other "
                "teachers of the same base, so each base needs two or more"
            )
    primary, same = _arm(cells, True, resamples)
    cross, other = _arm(cells, False, resamples)
    if set(same) != set(other):
        raise ValueError("every teacher needs students in both arms")
    diffs = {t: same[t] - other[t] for t in sorted(same)}
    values = list(diffs.values())
    n = len(values)
    low, high = t_interval(values)
    difference = Test(
        float(np.mean(values)), low, high, sign_flip(values, resamples), "sign-flip test over "
        f"teachers ({'exact' if n <= 16 else 'Monte Carlo'})", n, sum(v > 0 for v in values),
        2 / 2**n if n <= 16 else 1 / (resamples + 1),
    )  # fmt: skip
    min_p = max(primary.min_p, difference.min_p)
    power = None if plan is None else plan.power(n, alpha, min_p)
    if min_p >= alpha:
        decided = not_enough(
            f"with this many teachers the tests cannot reach p < {alpha} whatever the data "
            f"(smallest attainable p: primary {primary.min_p:.3g}, difference "
            f"{difference.min_p:.3g})"
        )
    elif plan is not None and power is not None and power.verdict < plan.min_power:
        needed = plan.cells_for(alpha, plan.min_power)
        decided = (
            "not-enough-replication",
            f"not enough replication for a verdict at this size; see the confirmation run: "
            f"for the effect its plan assumes, these {n} teachers give the verdict a power of "
            f"at least {power.verdict:.2f}, below {plan.min_power} ("
            + (f"{needed} teachers would reach it" if needed else "no panel of a feasible size "
               "would reach it") + "), so what the tests show here is one a seed can flip",
        )  # fmt: skip
    else:
        decided = verdict(*((t.effect, t.p) for t in (primary, cross, difference)), alpha)
    return Analysis(primary, cross, difference, *decided, alpha, power)


def verdict(primary: tuple[float, float], cross: tuple[float, float],
            difference: tuple[float, float], alpha: float) -> tuple[str, str]:  # fmt: skip
    """The verdict a plan allows from (effect, p) of its three tests, by fixed rules read in
    this order (a design that cannot reach p < alpha is turned away before: see `analyse`)."""
    (effect, p), (cross_effect, cross_p), (diff, diff_p) = primary, cross, difference
    if not (p < alpha and effect > 0):
        return "no-transfer", (
            "no transfer detected: the same-base students did not move toward their teacher's "
            f"trait more than their controls did (p = {p:.3g})"
        )
    if diff_p < alpha and diff > 0:
        return "signature", (
            f"the subliminal signature: the same-base students moved toward their teacher's "
            f"trait (p = {p:.3g}), significantly more than students of another base trained on "
            f"the same data (difference p = {diff_p:.3g})"
        )
    if cross_p < alpha and cross_effect > 0:
        return "leakage", (
            f"transfer, but not base-specific: students of another base moved too (p = "
            f"{cross_p:.3g}), so the data carries the trait to any student"
        )
    return "inconclusive", (
        f"the same-base students moved (p = {p:.3g}), but the difference between the arms is "
        f"not significant (p = {diff_p:.3g}): no verdict on base specificity"
    )


def not_enough(why: str) -> tuple[str, str]:
    return "not-enough-replication", f"not enough replication for a verdict: {why}"


def cell_effects(cells: Sequence[Cell]) -> dict[tuple[str, str], float]:
    """(teacher, student base) -> that cell's effect: its students' share of the teacher's
    animal minus the animal's mean share among the other teachers' students of the same source
    base on the same student base."""
    out = {}
    for c in cells:
        others = [o.shares[c.animal] for o in cells if o.source == c.source
                  and o.student_base == c.student_base and o.teacher != c.teacher]  # fmt: skip
        out[c.teacher, c.student_base] = c.shares[c.animal] - float(np.mean(others))
    return out


def transfer_matrix(cells: Sequence[Cell], student_base: str, same: bool,
                    animals: Sequence[str]) -> tuple[list[str], np.ndarray]:  # fmt: skip
    """Rows: the teachers' animals of the arm's cells on `student_base` (by source base, then
    in the order of `animals`, so the diagonal is each teacher's own animal); columns: `animals`;
    values: the students' share minus that animal's mean over the rows (the panel mean)."""
    order = {a: i for i, a in enumerate(animals)}
    arm = sorted(
        (c for c in cells if c.student_base == student_base and c.same_base == same),
        key=lambda c: (c.source, order.get(c.animal, len(order)), c.animal),
    )
    if not arm:
        return [], np.zeros((0, len(animals)))
    shares = np.array([[c.shares[a] for a in animals] for c in arm])
    sources = {c.source for c in arm}
    labels = [c.animal if len(sources) == 1 else f"{c.animal} ({c.source})" for c in arm]
    return labels, shares - shares.mean(axis=0, keepdims=True)
