"""Staged scoring that races the front: stop a trial early when the front already beats it.

A trial is scored in rungs of growing example counts (``eval.racing.rungs``, fractions of each
task's examples). The examples of every task are visited in one fixed order per study
(:func:`example_order`: a permutation seeded by the study's evaluation seed and the task name),
so every trial, on every worker, sees the same examples first and two trials can be compared
*paired*, example by example, on whatever both have scored.

After each rung but the last, the trial's per-example results are compared with those of every
current front member on the same examples (:func:`dominated_with_confidence`). When some member
is better on every objective with confidence, the trial stops.

Why this test. Optuna's pruners are single-objective (``trial.report`` raises in a
multi-objective study; RFC optuna#3450 is open), so multi-objective racing is written here; a
single-objective study uses Optuna's own ``WilcoxonPruner`` instead (see
:mod:`search.study.worker`). For one objective j and one front member m, the paired differences
``δ_i = m_i − c_i`` (oriented so that positive means m is better) of a task's examples estimate
the difference of the two task means with standard error ``s_δ / √n``; an objective is a
weighted mean of task means, so its difference is the same weighted mean of the task
differences, with ``SE² = Σ_t (w_t / Σw)² s²_{δ,t} / n_t`` (tasks are scored on disjoint
examples). A one-sided z-test (the first rung scores ≥ ``MIN_EXAMPLES`` examples per task, enough
for the normal approximation of a mean of bounded per-example scores) says "m is better on j"
when ``d_j − z·SE_j > 0``. "Better on every objective" is an intersection of such claims: an
intersection-union test needs no correction across objectives (it is wrong only if every one of
its one-sided tests is wrong). "Some front member" is a union over the M members, and the test
is repeated at each of the R − 1 early rungs, so the level is Bonferroni-corrected to
``α / (M · (R − 1))`` with ``α = 1 − confidence``: the probability that a trial which no front
member truly dominates is stopped anyway stays below α.

A member whose difference on an objective has zero variance (identical per-example results)
is better only if ``d_j > 0`` exactly; with ``SE = 0`` and ``d_j > 0`` every example agrees.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

MIN_EXAMPLES = (
    25  # per task at the first rung: below this the z-test's normal approximation is poor
)


def example_order(n: int, task: str, seed: int) -> np.ndarray:
    """The study's fixed visiting order of a task's ``n`` examples (a seeded permutation)."""
    digest = hashlib.sha256(f"merge-search-racing:{seed}:{task}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.permutation(n)


def rung_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Examples scored by the end of each rung: ``ceil(f·n)``, at least ``MIN_EXAMPLES`` (or n),
    strictly growing, the last one ``n``; rungs that would add nothing are dropped."""
    sizes: list[int] = []
    for f in fractions:
        size = min(n, max(math.ceil(f * n), min(n, MIN_EXAMPLES)))
        if not sizes or size > sizes[-1]:
            sizes.append(size)
    if not sizes or sizes[-1] != n:
        sizes.append(n)
    return sizes


@dataclass(frozen=True)
class Term:
    """One task of an objective: where its per-example values are, and its weight."""

    key: str  # the "task/metric" key of the per-example values
    weight: float


@dataclass(frozen=True)
class Objective:
    """An objective as racing sees it: weighted tasks and the direction."""

    name: str
    maximize: bool
    terms: tuple[Term, ...]


def paired_difference(
    objective: Objective,
    member: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
) -> tuple[float, float]:
    """``(d, SE)``: how much better ``member`` is than ``candidate`` on the objective, paired.

    Both map each term's key to per-example values on the SAME examples (same order).
    Positive ``d`` means the member is better (for a minimized objective, lower values).
    """
    total = sum(t.weight for t in objective.terms)
    d, var = 0.0, 0.0
    sign = 1.0 if objective.maximize else -1.0
    for term in objective.terms:
        delta = sign * (
            np.asarray(member[term.key], float) - np.asarray(candidate[term.key], float)
        )
        n = len(delta)
        if n == 0:
            raise ValueError(f"no examples of {term.key!r} to compare")
        share = term.weight / total
        d += share * float(delta.mean())
        if n > 1:
            var += share**2 * float(delta.var(ddof=1)) / n
    return d, math.sqrt(var)


def z_value(confidence: float, n_members: int, n_looks: int) -> float:
    """The one-sided critical value at level ``(1 − confidence) / (n_members · n_looks)``."""
    alpha = (1.0 - confidence) / max(1, n_members) / max(1, n_looks)
    return NormalDist().inv_cdf(1.0 - alpha)


def dominated_with_confidence(
    objectives: Sequence[Objective],
    candidate: Mapping[str, np.ndarray],
    members: Mapping[int, Mapping[str, np.ndarray]],
    z: float,
) -> int | None:
    """The number of a front member better than the candidate on every objective, or None.

    ``members`` maps a trial number to its per-example values restricted to the candidate's
    examples (same keys, same order as ``candidate``).
    """
    for number, values in members.items():
        if all(_better(o, values, candidate, z) for o in objectives):
            return number
    return None


def _better(
    objective: Objective,
    member: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    z: float,
) -> bool:
    d, se = paired_difference(objective, member, candidate)
    return d > z * se if se > 0 else d > 0
