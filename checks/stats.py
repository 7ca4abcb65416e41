"""The statistics a probe result needs to be read honestly: intervals and two-model tests.

- Wilson score interval for a share of sampled answers (correct near 0 and 1, where the
  normal approximation gives impossible bounds, and at the small counts a tiny model gets).
- Two-proportion z-test (pooled) for "is the student's share different from its control's",
  with sampled answers.
- A paired bootstrap over questions for the log-probability probe, whose per-question shares
  are not counts: resample questions, recompute the mean difference.
- Welch's t-test over training seeds (and its contrasts), when each side is several students
  trained alike: the tests above compare two models, and call a shift significant whenever it
  is consistent across questions, however small; whether *training on this data* moves a
  student is a question about training runs, so its unit of replication is the seed.
- A sign-flip test, exact or with a Monte Carlo p that is never 0, for paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of successes / trials."""
    if trials <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes out of {trials} trials")
    z = _NORMAL.inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    if successes == 0:  # exact at the ends (the formula leaves a rounding residue there)
        return (0.0, min(1.0, centre + half))
    if successes == trials:
        return (max(0.0, centre - half), 1.0)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Comparison:
    difference: float  # share of a minus share of b
    p_value: float  # two-sided
    low: float | None = None  # a confidence interval of the difference, where computed
    high: float | None = None
    method: str = ""


def two_proportions(k1: int, n1: int, k2: int, n2: int) -> Comparison:
    """Two-sided pooled z-test of k1/n1 against k2/n2."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both samples need at least one trial")
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # both shares 0 or both 1
        return Comparison(p1 - p2, 1.0 if p1 == p2 else 0.0, method="two-proportion z-test")
    p_value = 2 * (1 - _NORMAL.cdf(abs(p1 - p2) / se))
    return Comparison(p1 - p2, p_value, method="two-proportion z-test")


def paired_bootstrap(
    a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0
) -> Comparison:
    """Mean of a minus mean of b over the same questions: a 95% interval from resampling
    questions, and the p-value of a sign-flip test of the per-question differences.

    Why not the bootstrap's own p-value: with few questions that all move the same way, every
    resample has the same sign and the bootstrap says p = 0, while the sign-flip test says
    what n questions can support at best (2 / 2^n)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired samples of equal, non-zero length are needed")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diffs), size=(resamples, len(diffs)))
    means = diffs[picks].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    method = "paired over questions: bootstrap interval, sign-flip test"
    p_value = sign_flip(diffs, resamples, seed)
    return Comparison(float(diffs.mean()), p_value, float(low), float(high), method)


def sign_flip(diffs: Sequence[float], resamples: int = 9_999, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip (permutation) test that the mean of `diffs`
    is zero: exact over all 2^n sign patterns up to n = 16; beyond, `resamples` random
    patterns with p = (b + 1) / (m + 1), so a Monte Carlo p is never 0. All-zero differences
    give p = 1, not 0."""
    x = np.asarray(diffs, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("a sign-flip test needs at least one difference")
    observed = abs(float(x.mean())) - 1e-12
    if n <= 16:
        signs = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        return float((np.abs((signs * x).mean(axis=1)) >= observed).mean())
    signs = np.random.default_rng(seed).choice([-1, 1], size=(resamples, n))
    extreme = int((np.abs((signs * x).mean(axis=1)) >= observed).sum())
    return (extreme + 1) / (resamples + 1)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Mean of a minus mean of b where each value is one independently trained model (a
    training seed, its share averaged over the probe's questions): Welch's t-test and its
    interval (see `contrast`).

    Why over seeds: a test over one model's questions calls any consistent shift significant,
    and a training seed's luck is consistent across questions. Why Welch, fixed in advance:
    nothing guarantees two arms the same seed-to-seed spread (a trait can make one arm's
    students scatter more), and choosing between pooled and Welch after seeing both p-values is
    the post-hoc choice a test must not allow. Its price with two seeds a side is about one
    degree of freedom: that design is reported as too little replication, not tested."""
    return contrast([a, b], [1.0, -1.0], confidence)


def contrast(
    groups: Sequence[Sequence[float]], weights: Sequence[float], confidence: float = 0.95
) -> Comparison:
    """The linear contrast sum(w_i * mean_i) of independent groups (training seeds), tested
    with Welch-Satterthwaite degrees of freedom: with weights (1, -1) Welch's two-sample test;
    with (1, -1, -1, 1) the difference of two arms' effects (student minus control on one
    base, minus the same on another), the interaction a "only the same base moved" claim
    needs. Every group needs two values. No spread at all (every group's seeds agree) leaves
    the test undefined: it reports p = 1 (no evidence), never p = 0."""
    from scipy import stats

    if len(groups) != len(weights) or not groups:
        raise ValueError("one weight per group is needed")
    if any(len(g) < 2 for g in groups):
        raise ValueError("a test over training seeds needs at least two values in every group")
    arrays = [np.asarray(g, dtype=float) for g in groups]
    estimate = float(sum(w * x.mean() for w, x in zip(weights, arrays, strict=True)))
    parts = [w * w * x.var(ddof=1) / len(x) for w, x in zip(weights, arrays, strict=True)]
    variance = float(sum(parts))
    sizes = " vs ".join(str(len(x)) for x in arrays)
    method = f"Welch t-test over training seeds ({sizes})"
    if variance <= 0:
        return Comparison(estimate, 1.0, estimate, estimate, method + ": no spread, untestable")
    df = variance**2 / sum(p * p / (len(x) - 1) for p, x in zip(parts, arrays, strict=True))
    se = math.sqrt(variance)
    p_value = float(2 * stats.t.sf(abs(estimate / se), df))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Comparison(estimate, p_value, estimate - half, estimate + half, method)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of independent values (one per teacher, say); a single
    value or no spread gives the point itself."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    centre = float(x.mean())
    if len(x) < 2 or float(x.std(ddof=1)) == 0:
        return centre, centre
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * float(x.std(ddof=1))
    half /= math.sqrt(len(x))
    return centre - half, centre + half


def bootstrap_interval(
    values: list[float], resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-question values (resampling questions)."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)
