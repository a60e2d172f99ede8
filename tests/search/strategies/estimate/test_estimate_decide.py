"""Whether a trial's place is in doubt, and how far it scores next."""

from __future__ import annotations

import pytest

from search.strategies.estimate import Estimate, dominated_by, next_fraction, next_size, z_value


def d(mean: float, se: float) -> Estimate:
    return Estimate(mean, se, 20, 200)


def test_z_value():
    assert z_value(0.95, 1, 1) == pytest.approx(1.6449, abs=1e-4)
    assert z_value(0.95, 4, 3) > z_value(0.95, 1, 1)
    with pytest.raises(ValueError, match="confidence"):
        z_value(1.0, 1, 1)


def test_clearly_dominated_stops_where_it_is():
    z = z_value(0.95, 2, 3)
    diffs = {7: [d(0.01, 0.05), d(-0.1, 0.01)], 9: [d(0.3, 0.02), d(0.2, 0.03)]}
    assert dominated_by(diffs, z) == 9
    assert next_fraction(0.1, diffs, z) == 0.1
    assert next_size(20, 200, diffs, z) == 20


def test_possibly_on_the_front_scores_everything():
    z = z_value(0.95, 2, 3)
    diffs = {7: [d(0.05, 0.05), d(-0.1, 0.05)], 9: [d(-0.02, 0.02), d(0.2, 0.03)]}
    assert dominated_by(diffs, z) is None
    assert next_fraction(0.1, diffs, z) == 1.0
    assert next_size(20, 200, diffs, z) == 200


def test_in_doubt_scores_what_would_decide_it():
    z = 2.0
    # behind on both in point estimate, not yet with confidence: SE must fall to 0.05 / 2
    diffs = {3: [d(0.05, 0.04), d(0.10, 0.01)]}
    f = next_fraction(0.1, diffs, z)
    # SE²(f) = C (1 − f)/f with C = 0.04² · 0.1/0.9; need z·SE(f) < 0.05
    c = 0.04**2 * 0.1 / 0.9
    assert f == pytest.approx(1 / (1 + 0.05**2 / (z * z * c)))
    assert 0.2 <= f < 1.0
    # at least doubling, never past everything
    assert next_fraction(0.1, {3: [d(0.05, 0.0251)]}, z) == pytest.approx(0.2)
    assert next_fraction(0.6, {3: [d(0.01, 0.04)]}, z) == 1.0
    # a zero SE with a positive difference is decided
    assert dominated_by({3: [d(0.01, 0.0)]}, z) == 3
    assert dominated_by({3: [d(0.5, float("nan"))]}, z) is None
