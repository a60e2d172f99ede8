"""The report's view of a study: completed, feasible, distinct trials."""

from __future__ import annotations


def test_front_skips_infeasible_and_duplicate_trials(handmade):
    assert [r.number for r in handmade.front()] == [0, 1, 2]
