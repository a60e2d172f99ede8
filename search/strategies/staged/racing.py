"""Staged scoring that races the front: stop a trial early when the front already beats it.

A trial is scored in rungs of growing example counts (``eval.staged.rungs``, fractions of each
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

How a stopped trial is told to the sampler. It is COMPLETE with its partial values (the means
over the examples it scored) and one constraint more than the config's, violated by
``1 − examples scored / full evaluation`` (> 0; :func:`violation`), so that:

- NSGA-II / NSGA-III (constrained domination) rank it behind every feasible trial, and among
  stopped trials the one that lasted longer first; a PRUNED trial would be left out of the
  population altogether, as if never tried;
- TPE (``constraints_func``) puts it in the "bad" group that its acquisition avoids; TPE on
  PRUNED multi-objective trials is what Optuna issue 5260 reports failing;
- GP fits the constraint and weighs its acquisition by the probability of feasibility;
- Optuna's own ``best_trial`` / ``best_trials`` and this project's front, knee and export
  (:mod:`search.report.view`) skip infeasible trials: a stopped trial never becomes an answer.

This is also Optuna's own advice for ``WilcoxonPruner`` (return the partial mean rather than
raise ``TrialPruned``, so TPE learns from it), which single-objective studies use as their test.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

from evaluators.base import SubsetScores, subset_positions
from evaluators.stats import Objective, paired_difference

MIN_EXAMPLES = (
    25  # per task at the first rung: below this the z-test's normal approximation is poor
)


def example_order(n: int, task: str, seed: int) -> np.ndarray:
    """The study's fixed visiting order of a task's ``n`` examples (a seeded permutation)."""
    digest = hashlib.sha256(f"merge-search-racing:{seed}:{task}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return rng.permutation(n)


def rung_size(n: int, fraction: float) -> int:
    """Examples of a task of ``n`` scored by the end of the rung at ``fraction``: ``ceil(f·n)``,
    at least ``MIN_EXAMPLES`` (or n)."""
    return min(n, max(math.ceil(fraction * n), min(n, MIN_EXAMPLES)))


def plan_rungs(
    counts: Mapping[str, int], fractions: Sequence[float], seed: int
) -> tuple[dict[str, tuple[int, ...]], ...]:
    """The study's rungs: per rung, the documents each leaf task adds (sorted indices).

    Every task's documents are visited in :func:`example_order`; by the end of rung k a task of
    n documents has scored :func:`rung_size` of them. Rungs are common to all tasks: a rung
    where some task would add nothing is merged into the next, so every rung adds at least one
    document of every task (one rung: no early stop). The same counts, fractions and seed
    give the same rungs on every worker.
    """
    orders = {task: example_order(n, task, seed) for task, n in counts.items()}
    sizes = {task: [rung_size(n, f) for f in fractions] for task, n in counts.items()}
    last = len(fractions) - 1
    kept: list[int] = []
    for k in range(last + 1):
        before = {t: sizes[t][kept[-1]] if kept else 0 for t in counts}
        if all(sizes[t][k] > before[t] for t in counts):
            kept.append(k)
    if not kept or kept[-1] != last:
        if kept:
            kept.pop()
        kept.append(last)
    rungs: list[dict[str, tuple[int, ...]]] = []
    for i, k in enumerate(kept):
        start = {t: sizes[t][kept[i - 1]] if i else 0 for t in counts}
        rungs.append(
            {t: tuple(sorted(int(d) for d in orders[t][start[t] : sizes[t][k]])) for t in counts}
        )
    return tuple(rungs)


class Partial:
    """A trial's per-example values over the rungs scored so far, with their positions.

    ``leaves`` (``Evaluator.example_layout().leaves``) says which leaf tasks each score key's values
    concatenate; ``counts`` how many documents a full evaluation scores per leaf. Each rung's
    values come in the evaluator's order (per leaf ascending document, leaves concatenated);
    their positions are where the same examples sit in a full evaluation's values, so a front
    member's stored values are read at exactly the candidate's examples (:meth:`at`).
    """

    def __init__(self, leaves: Mapping[str, Sequence[str]], counts: Mapping[str, int]) -> None:
        self._leaves = {k: tuple(v) for k, v in leaves.items()}
        self._counts = dict(counts)
        # a full evaluation's number of values per key
        self._sizes = {k: sum(self._counts[leaf] for leaf in v) for k, v in self._leaves.items()}
        self._values: dict[str, list[float]] = {k: [] for k in self._leaves}
        self._positions: dict[str, list[int]] = {k: [] for k in self._leaves}
        self.scored = 0  # documents scored, summed over leaf tasks

    def add(self, docs: Mapping[str, Sequence[int]], examples: Mapping[str, Sequence[float]]):
        """One rung's results: ``docs`` the documents it scored, ``examples`` per score key."""
        positions = subset_positions(self._leaves, self._counts, docs)
        self._add(docs, examples, positions)

    def add_subset(self, subset: SubsetScores, docs: Mapping[str, Sequence[int]]) -> None:
        """One rung's results as the evaluator scored them (``Evaluator.score_subset``)."""
        self._add(docs, subset.scores.examples, subset.positions)

    def _add(
        self,
        docs: Mapping[str, Sequence[int]],
        examples: Mapping[str, Sequence[float]],
        positions: Mapping[str, Sequence[int]],
    ) -> None:
        for key in self._leaves:
            where = list(positions[key])
            values = examples[key]
            if len(values) != len(where):
                raise ValueError(f"{key}: {len(values)} values for {len(where)} documents")
            self._values[key].extend(float(v) for v in values)
            self._positions[key].extend(where)
        self.scored += sum(len(docs[t]) for t in self._counts)

    def positions(self, key: str) -> list[int]:
        """Where the values of ``key`` scored so far sit in a full evaluation's values."""
        return self._positions[key]

    def values(self) -> dict[str, np.ndarray]:
        """Per score key, the values scored so far (in scoring order)."""
        return {k: np.asarray(v, float) for k, v in self._values.items()}

    def at(self, full: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray] | None:
        """A full evaluation's values read at this trial's examples (``None`` when ``full``
        lacks a key or has another length: it was scored on other examples)."""
        out = {}
        for key, where in self._positions.items():
            values = full.get(key)
            if values is None or len(values) != self._sizes[key]:
                return None
            out[key] = np.asarray(values, float)[where]
        return out

    def full(self) -> dict[str, tuple[float, ...]]:
        """Every key's values in a full evaluation's order (once every rung is in)."""
        out = {}
        for key, where in self._positions.items():
            if sorted(where) != list(range(self._sizes[key])):
                raise ValueError(f"{key}: not every example is scored yet")
            array = np.empty(self._sizes[key])
            array[where] = self._values[key]
            out[key] = tuple(float(v) for v in array)
        return out


def front(values: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated rows of ``values`` (per row one value per objective)."""
    signs = np.where(np.asarray(maximize, bool), 1.0, -1.0)
    points = np.asarray(values, float).reshape(len(values), len(signs)) * signs
    out = []
    for i, p in enumerate(points):
        dominated = np.any(np.all(points >= p, axis=1) & np.any(points > p, axis=1))
        if not dominated:
            out.append(i)
    return out


def violation(scored: int, full: int) -> float:
    """The racing constraint of a stopped trial: the share of a full evaluation it skipped."""
    return max(1.0 - scored / full, 1e-6) if full else 1.0


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
