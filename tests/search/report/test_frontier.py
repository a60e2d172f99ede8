"""Pareto front, knee, hypervolume and preference pick against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from search.report.frontier import (
    best_point,
    dominates,
    hypervolume,
    hypervolume_history,
    knee_point,
    leads,
    normalized_utilities,
    pareto_front,
    parse_prefer,
    prefer_point,
    reference_point,
)

MAX2 = ("maximize", "maximize")


def test_front_maximize_drops_dominated_rows():
    values = [(1, 5), (2, 4), (3, 3), (2, 2), (0, 6), (3, 3)]
    # (2, 2) is dominated by (2, 4); the two (3, 3) rows tie and both stay
    assert pareto_front(values, MAX2) == [0, 1, 2, 4, 5]


def test_front_respects_mixed_directions():
    values = [(1.0, 0.5), (1.0, 0.4), (0.9, 0.1), (2.0, 0.9)]
    # maximize accuracy, minimize loss: (1.0, 0.4) beats (1.0, 0.5); (0.9, 0.1) is cheapest
    assert pareto_front(values, ("maximize", "minimize")) == [1, 2, 3]
    assert dominates((1.0, 0.4), (1.0, 0.5), ("maximize", "minimize"))
    assert not dominates((1.0, 0.5), (1.0, 0.5), ("maximize", "minimize"))


def test_front_single_objective_is_every_best_row():
    assert pareto_front([(0.3,), (0.7,), (0.7,), (0.1,)], ("maximize",)) == [1, 2]
    assert pareto_front([(0.3,), (0.7,)], ("minimize",)) == [0]
    assert pareto_front([], MAX2) == []


def test_normalized_utilities_flip_minimized_objectives():
    util = normalized_utilities([(0.0, 10.0), (1.0, 20.0)], ("maximize", "minimize"))
    np.testing.assert_allclose(util, [[0.0, 1.0], [1.0, 0.0]])
    # a constant objective is 1 everywhere: nothing to trade off
    np.testing.assert_allclose(normalized_utilities([(1, 2), (1, 3)], MAX2)[:, 0], [1, 1])


def test_knee_is_closest_to_utopia_after_normalization():
    front = [(0.0, 1.0), (0.5, 0.8), (1.0, 0.0)]
    assert knee_point(front, MAX2) == 1  # distance 0.54 against 1.0 for both extremes
    # scaling one objective does not move the knee (normalized first)
    assert knee_point([(0.0, 100.0), (0.5, 80.0), (1.0, 0.0)], MAX2) == 1
    # minimize both: same geometry mirrored
    assert knee_point([(1.0, 0.0), (0.5, 0.2), (0.0, 1.0)], ("minimize", "minimize")) == 1
    assert knee_point([(0.4, 0.4)], MAX2) == 0
    with pytest.raises(ValueError):
        knee_point([], MAX2)


def test_knee_in_three_objectives():
    front = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.6, 0.6, 0.5)]
    assert knee_point(front, ("maximize",) * 3) == 3


def test_hypervolume_2d_hand_computed():
    # union of [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1] = 3 + 2 + 1
    assert hypervolume([(1, 3), (2, 2), (3, 1)], MAX2, (0, 0)) == pytest.approx(6.0)
    # a dominated row adds nothing
    assert hypervolume([(1, 3), (2, 2), (3, 1), (1, 1)], MAX2, (0, 0)) == pytest.approx(6.0)
    # minimize: [1,3]x[2,3] + [2,3]x[1,3] - overlap [2,3]x[2,3] = 2 + 2 - 1
    mins = ("minimize", "minimize")
    assert hypervolume([(1, 2), (2, 1)], mins, (3, 3)) == pytest.approx(3.0)
    # rows not strictly inside the reference box add nothing
    assert hypervolume([(0, 5)], MAX2, (0, 0)) == 0.0
    assert hypervolume([], MAX2, (0, 0)) == 0.0


def test_hypervolume_1d_and_3d_hand_computed():
    assert hypervolume([(0.2,), (0.7,)], ("maximize",), (0.0,)) == pytest.approx(0.7)
    max3 = ("maximize",) * 3
    assert hypervolume([(1, 1, 1)], max3, (0, 0, 0)) == pytest.approx(1.0)
    # 2 + 2 - the shared unit cube
    assert hypervolume([(1, 1, 2), (2, 1, 1)], max3, (0, 0, 0)) == pytest.approx(3.0)


def test_hypervolume_2d_agrees_with_optuna_wfg():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    points = rng.random((30, 2))
    ours = hypervolume(points.tolist(), ("minimize", "minimize"), (1.0, 1.0))
    assert ours == pytest.approx(compute_hypervolume(points, np.array([1.0, 1.0])))


def test_hypervolume_history_is_monotone_and_ends_at_the_total():
    values = [(0.1, 0.1), (0.5, 0.2), (0.2, 0.6), (0.3, 0.3), (0.6, 0.6)]
    ref = reference_point(values, MAX2)
    np.testing.assert_allclose(ref, [0.1, 0.1])
    hist = hypervolume_history(values, MAX2, ref)
    assert len(hist) == len(values)
    assert hist == sorted(hist)
    assert hist[0] == 0.0
    assert hist[-1] == pytest.approx(hypervolume(values, MAX2, ref))
    assert hist[-1] == pytest.approx(0.25)  # (0.6-0.1)^2, the last row dominates all


def test_leads_over_a_reference_follow_the_directions():
    got = leads([(0.5, 2.0)], ("maximize", "minimize"), (0.4, 3.0))
    assert np.allclose(got, [[0.1, 1.0]])


def test_knee_with_a_reference_takes_the_largest_mean_lead_among_rows_ahead_everywhere():
    front = [(0.70, 0.20), (0.52, 0.50), (0.45, 0.60), (0.10, 0.95)]
    soup = (0.50, 0.45)
    # leads (0.2, -0.25), (0.02, 0.05), (-0.05, 0.15), (-0.4, 0.5): only row 1 is ahead everywhere
    assert knee_point(front, MAX2, soup) == 1
    # two rows ahead everywhere: the larger mean lead (0.12 > 0.10) wins, not the larger
    # smallest lead (0.02 < 0.05); the extreme row is behind on code
    assert knee_point([(0.55, 0.50), (0.60, 0.47), (0.90, 0.20)], MAX2, soup) == 1
    # no row ahead everywhere: the largest smallest lead (-0.1 > -0.15)
    assert knee_point([(0.40, 0.40), (0.45, 0.30)], MAX2, soup) == 0
    assert knee_point([(0.4, 0.4)], MAX2, soup) == 0  # one row: itself, even behind the soup
    # ties on the mean lead go to the earlier row
    assert knee_point([(0.6, 0.5), (0.7, 0.5), (0.7, 0.5)], MAX2, soup) == 1
    # minimized objectives: lead = reference - value
    assert knee_point([(0.3, 0.9), (0.42, 0.42)], ("minimize", "minimize"), (0.5, 0.5)) == 1


def test_prefer_with_a_reference_weighs_the_leads():
    front = [(0.70, 0.46), (0.55, 0.55), (0.46, 0.80)]
    soup = (0.45, 0.45)
    # leads (0.25, 0.01), (0.10, 0.10), (0.01, 0.35): all ahead everywhere; sums 0.26, 0.20, 0.36
    assert prefer_point(front, MAX2, [1.0, 1.0], soup) == knee_point(front, MAX2, soup) == 2
    assert prefer_point(front, MAX2, [1.0, 0.0], soup) == 0  # code only: largest lead there
    assert prefer_point(front, MAX2, [0.9, 0.05], soup) == 0  # 0.2255 > 0.095 > 0.0265
    assert prefer_point(front, MAX2, [0.05, 0.9], soup) == 2
    # none ahead of (0.6, 0.6) everywhere: the largest smallest weighted lead
    assert prefer_point(front, MAX2, [1.0, 1.0], (0.6, 0.6)) == 1  # -0.14, -0.05, -0.14


def _random_front(rng: np.random.Generator, m: int) -> np.ndarray:
    """A non-dominated set of 3-12 points in [0, 1]^m (maximized)."""
    points = rng.uniform(0.2, 0.8, size=(int(rng.integers(3, 13)), m))
    return points[pareto_front(points, ("maximize",) * m)]


def _fronts_around_a_soup(seed: int, cases: int = 300):
    """Seeded cases ``(case, rng, dirs, front, soup)``: two or three maximized objectives, a
    random front and a uniform merge's values; the caller may draw more from ``rng``."""
    rng = np.random.default_rng(seed)
    for case in range(cases):
        m = 2 + case % 2
        front = _random_front(rng, m)
        soup = rng.uniform(0.3, 0.6, size=m)
        yield case, rng, ("maximize",) * m, front, soup


def test_a_single_checkpoint_extreme_never_moves_the_choice():
    """Seeded random fronts around a uniform merge: adding an extreme point (strong on one
    objective, weak on the others, as a single checkpoint is) anywhere in the rows leaves the
    chosen member unchanged, for --knee and for --prefer."""
    moved_without_reference = 0
    for case, rng, dirs, front, soup in _fronts_around_a_soup(seed=0):
        m = len(dirs)
        extreme = np.full(m, rng.uniform(0.0, 0.15))
        extreme[int(rng.integers(m))] = rng.uniform(0.85, 1.0)
        at = int(rng.integers(len(front) + 1))
        rows = np.insert(front, at, extreme, axis=0)
        before = front[knee_point(front, dirs, soup)]
        after = rows[knee_point(rows, dirs, soup)]
        assert np.array_equal(before, after), case
        weights = rng.uniform(0.1, 1.0, size=m)
        before = front[prefer_point(front, dirs, weights, soup)]
        after = rows[prefer_point(rows, dirs, weights, soup)]
        assert np.array_equal(before, after), case
        moved_without_reference += not np.array_equal(
            front[knee_point(front, dirs)], rows[knee_point(rows, dirs)]
        )
    assert moved_without_reference > 0  # the normalized rule is pulled: the property can fail


def test_a_member_beating_the_uniform_merge_everywhere_is_preferred():
    """Seeded random fronts: whenever some member beats the uniform merge on every objective,
    the choice (--knee, and --prefer with positive weights) is such a member."""
    checked = 0
    for case, rng, dirs, front, soup in _fronts_around_a_soup(seed=1):
        m = len(dirs)
        beats = np.all(front > soup, axis=1)
        if not beats.any() or beats.all():
            continue
        checked += 1
        assert beats[knee_point(front, dirs, soup)], case
        assert beats[prefer_point(front, dirs, rng.uniform(0.05, 1.0, size=m), soup)], case
    assert checked > 50


def test_prefer_moves_along_the_front_with_the_weights():
    front = [(0.0, 1.0), (0.5, 0.8), (1.0, 0.0)]
    assert prefer_point(front, MAX2, [0.7, 0.3]) == 2  # scores 0.3, 0.59, 0.7
    assert prefer_point(front, MAX2, [0.3, 0.7]) == 1  # scores 0.7, 0.71, 0.3
    assert prefer_point(front, MAX2, [0.0, 1.0]) == 0
    with pytest.raises(ValueError):
        prefer_point(front, MAX2, [0.0, 0.0])
    with pytest.raises(ValueError):
        prefer_point(front, MAX2, [1.0])


def test_best_point_per_objective_and_direction():
    values = [(0.2, 5.0), (0.9, 7.0), (0.9, 1.0)]
    assert best_point(values, MAX2, 0) == 1  # tie -> the earlier row
    assert best_point(values, ("maximize", "minimize"), 1) == 2


def test_parse_prefer():
    names = ("instruct", "code")
    assert parse_prefer("instruct=0.7,code=0.3", names) == [0.7, 0.3]
    assert parse_prefer(" code = 2 ", names) == [0.0, 2.0]
    for bad, words in [
        ("math=1", "instruct, code"),
        ("instruct", "OBJECTIVE=WEIGHT"),
        ("instruct=x", "number"),
        ("instruct=-1", ">= 0"),
        ("instruct=0", "at least one"),
        ("instruct=1,instruct=2", "twice"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_prefer(bad, names)
