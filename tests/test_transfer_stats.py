"""The panel's pre-registered statistics on constructed data: a known effect is found, a null
gives uniform p-values, no spread gives p = 1, too few teachers give no verdict."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from germline.checks.stats import contrast, sign_flip, welch
from germline.checks.transfer import Cell, analyse, label_permutation, transfer_matrix

ANIMALS = ["owl", "dog", "eagle", "tiger", "cat", "lion"]


def panel(rng: np.random.Generator, same: float, cross: float, k: int = 4,
          bases: int = 2, noise: float = 0.01) -> list[Cell]:  # fmt: skip
    """K teachers per base; every teacher's students on every base; own-animal share raised
    by `same` on the teacher's base and by `cross` on the others."""
    cells = []
    for b in range(bases):
        for animal in ANIMALS[:k]:
            for s in range(bases):
                shares = {a: 0.1 + noise * rng.standard_normal() for a in ANIMALS}
                shares[animal] += same if s == b else cross
                cells.append(Cell(f"{animal}-t{b}", animal, f"b{b}", f"b{s}", shares))
    return cells


def test_a_known_effect_is_found_and_placed() -> None:
    a = analyse(panel(np.random.default_rng(0), same=0.05, cross=0.0))
    assert a.verdict == "signature"
    assert a.primary.effect == pytest.approx(0.05, abs=0.015)
    assert a.primary.low < a.primary.effect < a.primary.high
    assert a.primary.p < 0.01 and a.primary.positive == 8 and a.primary.cells == 8
    assert a.primary.test.startswith("permutation test over teacher labels (exact, 576)")
    assert a.cross_base.p > 0.05 or abs(a.cross_base.effect) < 0.02
    assert a.difference.effect == pytest.approx(0.05, abs=0.02) and a.difference.p < 0.05


def test_leakage_and_no_transfer_are_told_apart() -> None:
    assert analyse(panel(np.random.default_rng(1), 0.05, 0.05)).verdict == "leakage"
    assert analyse(panel(np.random.default_rng(2), 0.0, 0.0)).verdict in {
        "no-transfer",
        "inconclusive",
    }


def test_null_p_values_are_uniform() -> None:
    """Over many null panels, the p-values of all three tests spread evenly over [0, 1]."""
    rng = np.random.default_rng(3)
    ps = {"primary": [], "cross": [], "difference": []}
    for _ in range(300):
        a = analyse(panel(rng, 0.0, 0.0), resamples=999)
        ps["primary"].append(a.primary.p)
        ps["cross"].append(a.cross_base.p)
        ps["difference"].append(a.difference.p)
    for name, values in ps.items():
        values = np.array(values)
        assert 0.02 < (values < 0.05).mean() < 0.1, name
        assert 0.4 < (values < 0.5).mean() < 0.6, name
        # discrete exact tests: uniform within their lattice, so a loose KS bound
        assert stats.kstest(values, "uniform").statistic < 0.1, name


def test_teacher_specific_effects_that_cancel_move_the_primary_but_not_the_verdict() -> None:
    """Each teacher's students move toward its animal by its own amount (SD 0.03 between
    teachers, about the scatter the README measured), averaging 0. The permutation test over
    labels tests "the animal matters to no teacher", so it rejects far more often than alpha;
    the sign-flip test of the differences keeps its level, and so does the verdict, which needs
    both. What the primary's p alone cannot tell apart: a mean effect from a scatter of them."""
    rng = np.random.default_rng(6)
    primary = difference = verdicts = 0
    draws = 1000
    for _ in range(draws):
        cells = []
        for b in range(2):
            for animal in ANIMALS[:4]:
                own = 0.03 * rng.standard_normal()
                for s in range(2):
                    shares = {a: 0.1 + 0.005 * rng.standard_normal() for a in ANIMALS}
                    shares[animal] += own if s == b else 0.0
                    cells.append(Cell(f"{animal}-t{b}", animal, f"b{b}", f"b{s}", shares))
        a = analyse(cells)
        primary += a.primary.p < 0.05
        difference += a.difference.p < 0.05
        verdicts += a.verdict == "signature"
    assert primary / draws > 0.15  # measured 0.28 (the difference 0.045, the verdict 0.021)
    assert difference / draws < 0.08 and verdicts / draws < 0.05


def test_no_spread_gives_p_one_not_zero() -> None:
    flat = panel(np.random.default_rng(4), 0.0, 0.0, noise=0.0)
    a = analyse(flat)
    assert a.primary.p == 1.0 and a.difference.p == 1.0 and a.verdict == "no-transfer"
    assert sign_flip([0.0, 0.0, 0.0]) == 1.0
    w = welch([0.1, 0.1], [0.2, 0.2])  # both sides without spread: untestable, not p = 0
    assert w.p_value == 1.0 and "untestable" in w.method
    one = welch([0.1, 0.1], [0.2, 0.25])  # one side without spread: Welch uses the other's
    assert 0 < one.p_value < 1


def test_too_few_teachers_get_no_verdict() -> None:
    a = analyse(panel(np.random.default_rng(5), 0.2, 0.0, k=2))
    assert a.verdict == "not-enough-replication"
    assert "not enough replication" in a.reading
    with pytest.raises(ValueError, match="two or more"):
        analyse([c for c in panel(np.random.default_rng(5), 0.1, 0.0, k=2) if c.animal == "owl"])


def test_monte_carlo_p_is_never_zero() -> None:
    blocks = [np.eye(9) for _ in range(2)]  # 9!^2 reassignments: Monte Carlo
    stat, p, min_p, how = label_permutation(blocks, resamples=199)
    assert stat == 1.0 and p == pytest.approx(1 / 200) and "Monte Carlo" in how
    assert min_p == pytest.approx(1 / 200)
    assert sign_flip(list(np.full(40, 0.1)), resamples=99) == pytest.approx(1 / 100)


def test_contrast_is_the_arms_difference() -> None:
    rng = np.random.default_rng(6)
    groups = [list(0.1 + 0.01 * rng.standard_normal(4)) for _ in range(4)]
    c = contrast(groups, [1, -1, -1, 1])
    expected = np.mean(groups[0]) - np.mean(groups[1]) - np.mean(groups[2]) + np.mean(groups[3])
    assert c.difference == pytest.approx(expected) and c.low < c.difference < c.high
    two = contrast(groups[:2], [1, -1])
    assert two.p_value == pytest.approx(
        stats.ttest_ind(groups[0], groups[1], equal_var=False).pvalue
    )


def test_transfer_matrix_is_centred() -> None:
    cells = panel(np.random.default_rng(7), 0.05, 0.0)
    rows, m = transfer_matrix(cells, "b0", True, ANIMALS)
    assert rows == ANIMALS[:4] and m.shape == (4, len(ANIMALS))
    assert np.allclose(m.sum(axis=0), 0)
    assert all(m[i, ANIMALS.index(a)] > 0 for i, a in enumerate(rows))
    cross_rows, _ = transfer_matrix(cells, "b0", False, ANIMALS)
    assert cross_rows == ANIMALS[:4]  # one source base: no base in the labels
