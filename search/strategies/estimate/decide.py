"""More examples only where the place is in doubt: stop, or how far to score next.

A trial has scored the fraction ``f`` of every task's examples (the same fraction per task).
For each current front member m and objective j, :func:`.estimate.paired_difference` gives the
estimate ``d_mj`` of "m minus the trial", oriented so that positive means m is better, with
standard error ``SE_mj``.

- The trial's place is decided — it is off the front — when some member is better on every
  objective with confidence: ``d_mj − z·SE_mj > 0`` for all j (:func:`dominated_by`). This is
  an intersection-union test per member (no correction across objectives); the union over M
  members and the repeated looks are covered by Bonferroni, ``z`` at level
  ``(1 − confidence) / (M · looks)`` (:func:`z_value`).
- Otherwise it is in doubt. When no member is better on every objective even in point
  estimate, the trial may be on the front and scores everything (front members end scored in
  full). When some are, the fraction that would decide it is read off the SE's law under
  sampling without replacement: with every task at fraction f, ``SE²(f) = C (1 − f)/f``, so
  ``z·SE(f') < d`` needs ``f' > 1 / (1 + d²/(z² C))``, ``C = SE(f)² f/(1 − f)``; the member
  needing the least, its worst objective. The next fraction is at least ``growth × f`` (each
  look costs a test and a model call) and at most 1 (:func:`next_fraction`).

Pure functions of estimates; the caller decides what "the front" is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import TypeVar

from search.strategies.estimate.estimate import Estimate

Member = TypeVar("Member")


def z_value(confidence: float, n_members: int, n_looks: int) -> float:
    """The one-sided critical value at level ``(1 − confidence) / (n_members · n_looks)``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / max(1, n_members) / max(1, n_looks)
    return NormalDist().inv_cdf(1.0 - alpha)


def _confident(d: Estimate, z: float) -> bool:
    if math.isnan(d.se):
        return False
    return d.mean - z * d.se > 0 if d.se > 0 else d.mean > 0


def dominated_by(differences: Mapping[Member, Sequence[Estimate]], z: float) -> Member | None:
    """The first member better than the trial on every objective with confidence, or None.

    Args:
        differences: per member, per objective, the estimate of member minus trial (oriented:
            positive = the member is better).
        z: the critical value (:func:`z_value`).
    """
    for member, diffs in differences.items():
        if diffs and all(_confident(d, z) for d in diffs):
            return member
    return None


def _fraction_needed(d: Estimate, f: float, z: float) -> float:
    """The fraction at which ``z·SE < d`` for a positive ``d`` (see the module)."""
    if d.se == 0 or math.isnan(d.se) or f >= 1.0:
        return 1.0 if math.isnan(d.se) else f
    c = d.se**2 * f / (1.0 - f)
    return 1.0 / (1.0 + d.mean**2 / (z * z * c))


def next_fraction(
    fraction: float,
    differences: Mapping[Member, Sequence[Estimate]],
    z: float,
    growth: float = 2.0,
) -> float:
    """The fraction of every task the trial should have scored after its next look.

    Returns ``fraction`` itself when the place is decided (:func:`dominated_by`), 1.0 when no
    member is better on every objective in point estimate, else the fraction that would decide
    it against the easiest member, at least ``growth × fraction`` and at most 1.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction}")
    if fraction >= 1.0 or dominated_by(differences, z) is not None:
        return fraction
    needs = [
        max(_fraction_needed(d, fraction, z) for d in diffs)
        for diffs in differences.values()
        if diffs and all(d.mean > 0 for d in diffs)
    ]
    if not needs:
        return 1.0
    return min(1.0, max(growth * fraction, min(needs)))


def next_size(
    n: int,
    total: int,
    differences: Mapping[Member, Sequence[Estimate]],
    z: float,
    growth: float = 2.0,
) -> int:
    """:func:`next_fraction` as an example count of a task of ``total`` examples."""
    f = next_fraction(n / total, differences, z, growth)
    return min(total, max(n, math.ceil(f * total - 1e-9)))
