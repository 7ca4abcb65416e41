"""Probe results read against each other: the test each comparison of the report uses.

One model against another is tested with what its probe method measured (answers counted, or
per-question probabilities); students trained alike on several seeds are tested over seeds,
since the seed-to-seed spread is the variation a claim about training has to beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from germline.checks.probes import ProbeResult
from germline.checks.stats import (
    Comparison,
    bootstrap_interval,
    paired_bootstrap,
    two_proportions,
    welch,
    wilson,
)


def compare(a: ProbeResult, b: ProbeResult) -> Comparison:
    """a's target share against b's: a two-proportion test for sampled answers, a paired
    bootstrap over questions for log-probabilities."""
    if a.method != b.method or a.target != b.target:
        raise ValueError("compare results of the same method and target")
    if a.method == "sampled":
        return two_proportions(a.hits, a.trials, b.hits, b.trials)
    return paired_bootstrap(a.per_question, b.per_question)


def pooled(results: Sequence[ProbeResult]) -> ProbeResult:
    """Several models' results (students trained alike) read as one: answers summed for the
    sampled probe, per-question shares averaged for the logprob probe. Its interval is over
    answers or questions only: the seed-to-seed spread is what `compare_groups` tests."""
    first = results[0]
    if len(results) == 1:
        return first
    model = "+".join(r.model for r in results)
    if first.method == "sampled":
        hits, trials = sum(r.hits for r in results), sum(r.trials for r in results)
        low, high = wilson(hits, trials)
        return replace(first, model=model, hits=hits, trials=trials, low=low, high=high,
                       share=hits / trials if trials else 0.0)  # fmt: skip
    per_question = [float(x) for x in np.mean([r.per_question for r in results], axis=0)]
    low, high = bootstrap_interval(per_question)
    return replace(first, model=model, per_question=per_question, low=low, high=high,
                   share=float(np.mean(per_question)))  # fmt: skip


def compare_groups(a: Sequence[ProbeResult], b: Sequence[ProbeResult]) -> Comparison:
    """a's students against b's: Welch's t-test over their shares where both sides have
    several training seeds; otherwise the two-model test of `compare` on the pooled results
    (a test over one model's questions, which a report must not read as a verdict)."""
    if len(a) >= 2 and len(b) >= 2:
        return welch([r.share for r in a], [r.share for r in b])
    return compare(pooled(a), pooled(b))
