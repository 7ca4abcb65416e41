"""The power plan (checks/power.py) on constructed panels: its figures against a simulation of
the panel's real tests, the size it asks for, and the verdict it withholds from a small design."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_transfer_stats import panel

from germline.checks.power import Plan, cells_for, design_power, t_power
from germline.checks.transfer import analyse

# the figures the README measured on the tuning seeds (experiments/panel.yaml's plan)
README = Plan(effect=0.0098, sd=0.025, difference=0.0133, difference_sd=0.0216)


def test_the_t_power_of_the_readme_figures() -> None:
    """At +0.0098 with a scatter of 0.025, 8 teachers have power 0.16 at 0.05 (the README's
    figure), and 54 is the first size past 0.8."""
    assert t_power(0.0098, 0.025, 8, 0.05) == pytest.approx(0.159, abs=0.002)
    assert t_power(0.0098, 0.025, 53, 0.05) < 0.8 <= t_power(0.0098, 0.025, 54, 0.05)
    assert t_power(0.0, 0.025, 30, 0.05) == pytest.approx(0.025, abs=1e-9)  # one tail of alpha
    assert t_power(0.01, 0.025, 1, 0.05) == 0.0


@pytest.mark.parametrize("alpha, target", [(0.05, 0.8), (0.01, 0.9), (0.05, 0.5)])
def test_cells_for_is_the_smallest_design_that_reaches_the_target(
    alpha: float, target: float
) -> None:
    n = README.cells_for(alpha, target)
    assert README.power(n, alpha).verdict >= target > README.power(n - 1, alpha).verdict
    with pytest.raises(ValueError, match="positive"):
        cells_for(-0.01, 0.02, 0.01, 0.02, alpha, target)
    assert cells_for(1e-5, 0.1, 1e-5, 0.1, alpha, target) is None  # past any feasible panel


def test_a_design_that_cannot_reach_alpha_has_no_power() -> None:
    assert design_power(0.05, 0.01, 0.05, 0.01, 4, 0.05, min_p=0.0625).verdict == 0.0


@pytest.mark.parametrize("k, alpha, effect", [(4, 0.05, 0.02), (5, 0.01, 0.025)])
def test_the_power_floors_against_a_simulation_of_the_panel_tests(
    k: int, alpha: float, effect: float
) -> None:
    """1,000 constructed panels of k teachers on each of two bases, every teacher's own animal
    raised by `effect` on its own base only, each share with noise of SD 0.02; each analysed by
    the real tests. A cell's effect then scatters by 0.02 * sqrt(k / (k - 1)) and a teacher's
    difference by sqrt(2) times that. The sign-flip test's power is the t figure (within 0.05);
    the permutation test's is at least its floor and at most 0.2 above it (the module says
    why); the verdict's is at least the product."""
    noise, draws = 0.02, 1000
    sd = noise * math.sqrt(k / (k - 1))
    rng = np.random.default_rng(k)
    primary = difference = both = 0
    for _ in range(draws):
        a = analyse(panel(rng, effect, 0.0, k=k, noise=noise), alpha)
        p = a.primary.p < alpha and a.primary.effect > 0
        d = a.difference.p < alpha and a.difference.effect > 0
        primary, difference, both = primary + p, difference + d, both + (p and d)
    floor = design_power(effect, sd, effect, sd * math.sqrt(2), 2 * k, alpha)
    simulated = {"primary": primary / draws, "difference": difference / draws}
    assert 0.15 < simulated["difference"] < 0.85  # a size where the figures can differ
    assert abs(simulated["difference"] - floor.difference) <= 0.05, (simulated, floor)
    assert floor.primary - 0.05 <= simulated["primary"] <= floor.primary + 0.2, (simulated, floor)
    assert both / draws >= floor.verdict - 0.05, (both / draws, floor)


def test_a_plan_withholds_the_verdict_from_a_design_too_small_for_it() -> None:
    """The same clear signature: without a plan it is the signature; with the README's plan,
    8 teachers are too few (power at least 0.05), so no verdict; with a plan for a large
    effect, the verdict stands."""
    cells = panel(np.random.default_rng(0), same=0.05, cross=0.0)
    assert analyse(cells).verdict == "signature" and analyse(cells).power is None
    small = analyse(cells, plan=README)
    assert small.verdict == "not-enough-replication"
    assert small.reading.startswith(
        "not enough replication for a verdict at this size; see the confirmation run"
    )
    assert small.power is not None and small.power.verdict < 0.1 and "54 teachers" in small.reading
    tiny = analyse(cells, plan=Plan(effect=1e-5, sd=0.1, difference=1e-5, difference_sd=0.1))
    assert tiny.verdict == "not-enough-replication"
    assert "no panel of a feasible size" in tiny.reading
    large = analyse(cells, plan=Plan(effect=0.05, sd=0.012, difference=0.05, difference_sd=0.017))
    assert large.verdict == "signature" and large.power is not None
    assert large.power.verdict >= 0.8
