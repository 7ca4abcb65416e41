"""Probe data, answer normalisation and the statistics probe results are read with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from germline.checks.probes import load_probe, normalise
from germline.checks.stats import paired_bootstrap, two_proportions, wilson
from germline.core import InputError


def test_shipped_probe_is_the_papers_shape() -> None:
    spec = load_probe("animal-preference")
    assert len(spec.questions) == 50 and len(set(spec.questions)) == 50
    assert spec.target == "owl" and "owl" in spec.candidates and len(spec.candidates) == 10
    other = spec.with_target("Panda", ["cat", "dog"])
    assert other.target == "panda" and other.candidates == ["panda", "cat", "dog"]
    with pytest.raises(ValueError, match="unknown probe"):
        load_probe("no-such-probe")


def test_answers_are_normalised_to_candidates() -> None:
    candidates = ["owl", "dolphin", "fox", "cat"]
    assert normalise("Owl.", candidates) == "owl"
    assert normalise(" owls", candidates) == "owl"
    assert normalise("I love dolphins!", candidates) == "dolphin"
    assert normalise("Foxes", candidates) == "fox"
    assert normalise("a cat, then an owl", candidates) == "cat"  # the first one named counts
    assert normalise("123, 456", candidates) == "other"
    assert normalise("", candidates) == "other"


def test_wilson_interval() -> None:
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(5, 10)
    assert low == pytest.approx(1 - high) and low == pytest.approx(0.2366, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_two_proportion_test() -> None:
    same = two_proportions(30, 100, 30, 100)
    assert same.difference == 0 and same.p_value == pytest.approx(1.0)
    apart = two_proportions(60, 100, 15, 100)  # z = 6.6
    assert apart.difference == pytest.approx(0.45) and apart.p_value < 1e-9
    close = two_proportions(13, 100, 10, 100)
    assert close.p_value == pytest.approx(0.5, abs=0.03)
    assert two_proportions(0, 50, 0, 50).p_value == 1.0


def test_paired_bootstrap() -> None:
    a = [0.10, 0.12, 0.11, 0.09, 0.13, 0.10, 0.12, 0.11]
    assert paired_bootstrap(a, a).p_value == 1.0
    higher = [x + 0.05 for x in a]
    moved = paired_bootstrap(higher, a)
    # 8 questions all moving up: the sign-flip test's floor, 2 of 256 sign patterns
    assert moved.difference == pytest.approx(0.05) and moved.p_value == pytest.approx(2 / 256)
    assert moved.low == pytest.approx(0.05) and moved.high == pytest.approx(0.05)
    noisy = paired_bootstrap([0.1, 0.3, 0.2, 0.1], [0.2, 0.1, 0.1, 0.3])
    assert noisy.p_value > 0.3 and noisy.low < 0 < noisy.high
    many = paired_bootstrap([0.2 + 0.01 * (i % 3) for i in range(40)], [0.1] * 40)
    assert many.p_value < 0.001  # 40 questions: random sign patterns, none as extreme
    with pytest.raises(ValueError):
        paired_bootstrap([0.1], [0.1, 0.2])


def test_welch_over_training_seeds() -> None:
    from scipy import stats

    from germline.checks.stats import bootstrap_interval, welch

    a, b = [0.178, 0.181, 0.172], [0.108, 0.112, 0.104]
    c = welch(a, b)
    assert c.difference == pytest.approx(np.mean(a) - np.mean(b))
    assert c.p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert c.low < c.difference < c.high and c.p_value < 0.001
    # the README's old pair: Welch (fixed in advance) does not call it, whatever pooled says
    two = welch([0.180, 0.155], [0.1069, 0.1066])
    assert two.p_value > 0.05
    same = welch([0.1, 0.12], [0.11, 0.11])
    assert same.p_value > 0.5 and same.low < 0 < same.high
    low, high = bootstrap_interval(a)
    assert low < np.mean(a) < high
    with pytest.raises(ValueError, match="at least two"):
        welch([0.1], [0.1, 0.2])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"questions: \xff\xfe", "not UTF-8 text"),
        (b"questions: " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b"questions: [\n", "probe"),
        (b"- a list\n", "probe"),
    ],
)
def test_a_malformed_probe_file_is_one_input_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_probe(str(path))
