"""A study read back for reporting: its config, objectives and completed trials.

:func:`open_view` loads the config and the existing study; :class:`StudyView` holds the
completed trials as :class:`Row` values (feasibility from the stored constraint values) and
computes the front and its knee with the pure functions of :mod:`search.report.frontier`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from search.errors import UserError
from search.report.frontier import knee_point, pareto_front, prefer_point
from search.report.table import counts_text
from search.study.config import load_config
from search.study.record import TrialRecord
from search.study.storage import count_states, load_study, open_storage, redact


@dataclass(frozen=True)
class Row:
    """One completed trial as the report sees it."""

    number: int
    values: tuple[float, ...]
    plan_key: str
    feasible: bool
    record: TrialRecord


@dataclass(frozen=True)
class StudyView:
    """A loaded study: its config, objective names and directions, and completed trials."""

    cfg: Any
    study: Any
    storage_url: str
    names: tuple[str, ...]
    directions: tuple[str, ...]
    rows: tuple[Row, ...]  # completed trials in trial order
    counts: Mapping[str, int]  # trial states -> how many

    def distinct_feasible(self) -> list[Row]:
        """Feasible rows, one per plan key (the lowest trial number wins)."""
        seen: dict[str, Row] = {}
        for row in self.rows:
            if row.feasible and row.plan_key not in seen:
                seen[row.plan_key] = row
        return list(seen.values())

    def front(self) -> list[Row]:
        """The Pareto front of :meth:`distinct_feasible`, in trial order."""
        rows = self.distinct_feasible()
        return [rows[i] for i in pareto_front([r.values for r in rows], self.directions)]

    def knee(self, front: Sequence[Row], reference: Sequence[float] | None = None) -> Row:
        """The knee of ``front`` (:func:`~search.report.frontier.knee_point`: with ``reference``,
        the uniform merge's values, the largest mean lead over it among the rows ahead of it on
        every objective; ties: lower trial)."""
        front = sorted(front, key=lambda r: r.number)
        return front[knee_point([r.values for r in front], self.directions, reference)]

    def rescored_front(
        self, front: Sequence[Row], values: Mapping[str, Sequence[float]]
    ) -> list[Row]:
        """The members of ``front`` that are Pareto-optimal on other values of the same
        objectives (``{plan_key: values}``, e.g. held-out re-scores), in trial order; members
        without values are left out."""
        rows = sorted((r for r in front if r.plan_key in values), key=lambda r: r.number)
        points = [values[r.plan_key] for r in rows]
        return [rows[i] for i in pareto_front(points, self.directions)]

    def knee_on(
        self,
        front: Sequence[Row],
        values: Mapping[str, Sequence[float]],
        reference: Sequence[float] | None = None,
    ) -> Row:
        """The knee of ``front`` judged on ``values`` (``{plan_key: values}``) and ``reference``
        (the uniform merge's values on the same split): the knee of the members' own front on
        those values (:meth:`rescored_front`)."""
        rows = self.rescored_front(front, values)
        points = [values[r.plan_key] for r in rows]
        return rows[knee_point(points, self.directions, reference)]

    def prefer_on(
        self,
        front: Sequence[Row],
        values: Mapping[str, Sequence[float]],
        weights: Sequence[float],
        reference: Sequence[float] | None = None,
    ) -> Row:
        """The member of ``front`` ``--prefer`` chooses on ``values`` (and ``reference``, as
        :meth:`knee_on`) among the members' own front on those values."""
        rows = self.rescored_front(front, values)
        points = [values[r.plan_key] for r in rows]
        return rows[prefer_point(points, self.directions, weights, reference)]

    def require_completed(self) -> None:
        if not self.rows:
            raise UserError(
                f"study {self.cfg.name!r} in {self.storage_url}: no completed trials yet "
                f"({counts_text(self.counts)}); run `merge-search launch` first"
            )


def open_view(config: str | Path, storage: str | None = None) -> StudyView:
    """Load the config and its existing study (``UserError`` if either is missing)."""
    cfg = load_config(config)
    url = storage or cfg.storage
    return view_of(cfg, load_study(cfg, open_storage(cfg, url)), url)


def view_of(cfg: Any, study: Any, url: str) -> StudyView:
    """The report's view of a loaded study (completed trials, feasibility from constraints)."""
    directions = tuple(d.name.lower() for d in study.directions)
    names = tuple(study.metric_names or [o.name for o in cfg.objectives])
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        record = TrialRecord.from_trial(t)
        # a trial a strategy stopped early is infeasible even when the sampler ignores constraints
        # (random, qmc): it never reaches the front
        rows.append(Row(t.number, record.values, record.key, record.feasible, record))
    return StudyView(cfg, study, redact(url), names, directions, tuple(rows), count_states(trials))
