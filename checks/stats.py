"""The statistics a probe result needs to be read honestly: intervals and two-model tests.

- Wilson score interval for a share of sampled answers (correct near 0 and 1, where the
  normal approximation gives impossible bounds, and at the small counts a tiny model gets).
- Two-proportion z-test (pooled) for "is the student's share different from its control's",
  with sampled answers.
- A paired bootstrap over questions for the log-probability probe, whose per-question shares
  are not counts: resample questions, recompute the mean difference.
- A t-test over training seeds, when each side is several students trained alike: the tests
  above compare two models, and call a shift significant whenever it is consistent across
  questions, however small; whether *training on this data* moves a student is a question
  about training runs, so its unit of replication is the seed.
"""

from __future__ import annotations

import math
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
    questions, and a p-value from a sign-flip test of the per-question differences (exact,
    all 2^n sign patterns, up to 16 questions; `resamples` random patterns beyond).

    Why not the bootstrap's own p-value: with few questions that all move the same way, every
    resample has the same sign and the bootstrap says p = 0, while the sign-flip test says
    what n questions can support at best (2 / 2^n)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired samples of equal, non-zero length are needed")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diffs), size=(resamples, len(diffs)))
    means = diffs[picks].mean(axis=1)
    observed = float(diffs.mean())
    low, high = np.quantile(means, [0.025, 0.975])
    n = len(diffs)
    if n <= 16:
        signs = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    else:
        signs = rng.choice([-1, 1], size=(resamples, n))
    flipped = np.abs((signs * diffs).mean(axis=1))
    p_value = float((flipped >= abs(observed) - 1e-12).mean())
    return Comparison(observed, p_value, float(low), float(high),
                      "paired over questions: bootstrap interval, sign-flip test")  # fmt: skip


def over_seeds(a: list[float], b: list[float], confidence: float = 0.95) -> Comparison:
    """Mean of a minus mean of b where each value is one independently trained model (a
    training seed, its share averaged over the probe's questions): a two-sample t-test with
    pooled variance, df = len(a) + len(b) - 2, and its interval.

    Why over seeds: a test over one model's questions calls any consistent shift significant,
    and a training seed's luck is consistent across questions. Why pooled, not Welch: both
    sides are one recipe with the same sources of seed noise, and for that balanced design
    (seeds nested in arms, crossed with questions) the mixed-model test of the arm difference
    is exactly this t-test on the seed means. Welch's correction would spend the few degrees of
    freedom two or three seeds give on unequal variances: with two seeds a side its df falls to
    about 1 whenever one side's seeds happen to agree."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        raise ValueError("a test over training seeds needs at least two values on each side")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(x.mean() - y.mean())
    df = len(x) + len(y) - 2
    pooled = ((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / df
    se = math.sqrt(pooled * (1 / len(x) + 1 / len(y)))
    method = f"t-test over training seeds ({len(x)} vs {len(y)}, pooled variance)"
    if se == 0:
        return Comparison(difference, 1.0 if difference == 0 else 0.0, method=method)
    p_value = float(2 * stats.t.sf(abs(difference / se), df))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Comparison(difference, p_value, difference - half, difference + half, method)


def bootstrap_interval(
    values: list[float], resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-question values (resampling questions)."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)
