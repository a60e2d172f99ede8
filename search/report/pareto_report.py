"""``merge-search pareto``'s report: one :class:`Report` built from the study, drawn as a table
or a plot.

:func:`build_report` gathers, then assembles: the front (feasible trials only, one row per
distinct plan), its knee (judged on the held-out re-scores when the study has held-out tasks, as
``export --knee`` chooses it), held-out re-scores, the input checkpoints' and the uniform merge's
scores, the test split comparison of the knee with the inputs (``eval.test``), and the
hypervolume history. Every value comes with its standard error (``stderr`` beside ``values``,
``heldout_stderr`` beside ``heldout``; ``None`` for trials recorded without one) and
``examples`` says how many examples each task score rests on. The table, the ``--json`` output
(:meth:`Report.to_json`) and the plots are all drawn from that report; :func:`pareto` also
stores the hypervolume history in optuna-dashboard and writes the plot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from optuna_dashboard import save_plotly_graph_object

from evaluators.stats import paired_difference
from search.engine.plan import MergePlan
from search.errors import UserError
from search.report.choose import note_verdict
from search.report.frontier import dominates, hypervolume, hypervolume_history, reference_point
from search.report.plots import check_plot_path, hypervolume_figure, write_plot
from search.report.scores import (
    Baseline,
    SplitScores,
    Verdict,
    cached_heldout,
    compare_on_test,
    find_baselines,
    heldout_configured,
    paired_objectives,
    score_heldout,
    split_configured,
    stderr_of,
)
from search.report.view import Row, StudyView, open_view

TELL_APART_SE = 2.0  # two front points differ when some objective's paired gap exceeds 2 SEs

DASHBOARD_GRAPH_ID = "merge-search-hypervolume"


@dataclass(frozen=True)
class ObjectiveInfo:
    name: str
    direction: str  # "maximize" | "minimize"
    search_tasks: bool = (
        False  # searched on other tasks: its search values are not in its tasks' units
    )


@dataclass(frozen=True)
class FrontRow:
    """A front member: its search scores, held-out re-scores and what it merges."""

    trial: int
    values: dict[str, float]
    stderr: dict[str, float | None]
    heldout: dict[str, float] | None  # None: not re-scored
    heldout_stderr: dict[str, float | None] | None
    knee: bool
    plan_key: str
    coefficients: dict[str, list[float]] | None
    params: dict[str, Any] | None
    task_scores: dict[str, float] | None
    indistinct_from: list[int]  # front trials the data cannot tell it apart from


@dataclass(frozen=True)
class TrialRow:
    """A completed trial as the plots show it."""

    trial: int
    values: dict[str, float]
    stderr: dict[str, float | None]
    feasible: bool
    duplicate_of: int | None
    stopped_by: int | None


@dataclass(frozen=True)
class HypervolumePoint:
    trial: int
    hypervolume: float


@dataclass(frozen=True)
class Hypervolume:
    reference: dict[str, float]  # the reference point: the worst value seen per objective
    value: float  # of the front
    history: list[HypervolumePoint]  # after each distinct feasible trial


@dataclass
class Report:
    """Everything ``merge-search pareto`` shows."""

    study: str
    storage: str
    objectives: list[ObjectiveInfo]
    trial_counts: dict[str, int]
    knee_trial: int
    knee_split: str  # the split the knee was judged on: "heldout" or "search"
    search_knee_trial: int
    examples: dict[str, dict[str, int]]  # {"search"|"heldout": {"task/metric": n}}
    front: list[FrontRow]
    baselines: list[Baseline]  # the uniform merge and each input, placed against the front
    heldout_note: str | None
    test: Verdict | None  # the knee against the baselines on the test split
    test_note: str | None
    trials: list[TrialRow]
    hypervolume: Hypervolume | None

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-able data (``--json``)."""
        return dataclasses.asdict(self)


def build_report(
    view: StudyView, *, heldout: bool = True, runtime_factory: Callable[..., Any] | None = None
) -> Report:
    """Everything ``merge-search pareto`` shows.

    ``heldout=False`` skips the held-out and the test re-scoring (``--no-heldout``).
    """
    view.require_completed()
    names, directions = view.names, view.directions
    front = view.front()
    if not front:
        raise UserError(
            f"study {view.cfg.name!r}: none of the {len(view.rows)} completed trials meets the "
            f"constraints; nothing to report"
        )
    front.sort(
        key=lambda r: [
            v if d == "minimize" else -v for v, d in zip(r.values, directions, strict=True)
        ]
    )
    baselines, baseline_plans = find_baselines(view, runtime_factory)
    uniform = next((b for b in baselines if b.kind == "uniform"), None)
    # the knee: the largest mean lead over the uniform merge among the members ahead of it on
    # every objective (frontier.KNEE_RULE)
    search_knee = view.knee(front, [uniform.values[n] for n in names] if uniform else None)
    reference = {uniform.plan_key: baseline_plans[uniform.plan_key]} if uniform else {}
    rescored, heldout_note = _heldout_scores(view, front, reference, heldout, runtime_factory)
    if heldout:  # inputs re-scored earlier (by an older pareto) are shown too
        rescored = {**cached_heldout(view), **rescored}
    held = {k: {n: float(s.objectives[n]) for n in names} for k, s in rescored.items()}
    held_se = {k: stderr_of(s.stderr, names) for k, s in rescored.items()}
    by_key = {r.plan_key: [held[r.plan_key][n] for n in names] for r in front if r.plan_key in held}
    held_uniform = held.get(uniform.plan_key) if uniform else None
    held_reference = [held_uniform[n] for n in names] if held_uniform else None
    # as `export --knee` chooses: the front judged on its held-out re-scores
    knee = view.knee_on(front, by_key, held_reference) if by_key else search_knee
    test, test_note = _test_comparison(view, knee, heldout, bool(by_key), runtime_factory)
    indistinct = cannot_tell_apart(view, front)
    rows = [_front_row(r, names, r is knee, held, held_se, indistinct) for r in front]
    _place_baselines(baselines, front, held, held_se, names, directions)
    return Report(
        study=view.cfg.name,
        storage=view.storage_url,
        objectives=[
            ObjectiveInfo(n, d, bool(o.search_tasks))
            for n, d, o in zip(names, directions, view.cfg.objectives, strict=True)
        ],
        trial_counts=dict(view.counts),
        knee_trial=knee.number,
        knee_split="heldout" if by_key else "search",
        search_knee_trial=search_knee.number,
        examples=_examples_per_task(front, rescored),
        front=rows,
        baselines=baselines,
        heldout_note=heldout_note,
        test=test,
        test_note=test_note,
        trials=[_trial_row(r, names) for r in view.rows],
        hypervolume=_hypervolume(view, front) if len(names) > 1 else None,
    )


def _heldout_scores(
    view: StudyView,
    front: Sequence[Row],
    reference: Mapping[str, MergePlan],
    heldout: bool,
    runtime_factory: Callable[..., Any] | None,
) -> tuple[dict[str, SplitScores], str | None]:
    """The held-out re-scores ``{plan_key: scores}`` the choice needs: the front's and the
    ``reference``'s (the uniform merge); or why none. The inputs are compared on the test split
    (:func:`_test_comparison`), so they are not re-scored here too."""
    if not heldout:
        return {}, "skipped (--no-heldout)"
    if not heldout_configured(view.cfg):
        return {}, "no held-out tasks in the config (eval.heldout)"
    plans = {r.plan_key: MergePlan.from_dict(r.record.plan) for r in front if r.record.plan}
    plans.update(reference)
    return score_heldout(view, plans, runtime_factory), None


def _test_comparison(
    view: StudyView,
    knee: Row,
    heldout: bool,
    on_heldout: bool,
    runtime_factory: Callable[..., Any] | None,
) -> tuple[Verdict | None, str | None]:
    """The knee against the inputs on the test split, or why there is none."""
    if not heldout:
        return None, "skipped (--no-heldout)"
    if not split_configured(view.cfg, "test"):
        return None, "no test tasks in the config (eval.test)"
    how = "knee of the Pareto front" + (" on held-out re-scores" if on_heldout else "")
    return compare_on_test(view, knee, how, runtime_factory), None


def _front_row(
    r: Row,
    names: Sequence[str],
    knee: bool,
    held: Mapping[str, dict[str, float]],
    held_se: Mapping[str, dict[str, float | None]],
    indistinct: Mapping[int, list[int]],
) -> FrontRow:
    return FrontRow(
        trial=r.number,
        values=dict(zip(names, r.values, strict=True)),
        stderr=stderr_of(r.record.stderr, names),
        heldout=held.get(r.plan_key),
        heldout_stderr=held_se.get(r.plan_key),
        knee=knee,
        plan_key=r.plan_key,
        coefficients=r.record.coefficients or None,
        params=r.record.params if r.record.plan else None,
        task_scores=r.record.task_scores or None,
        indistinct_from=indistinct.get(r.number, []),
    )


def _trial_row(r: Row, names: Sequence[str]) -> TrialRow:
    return TrialRow(
        trial=r.number,
        values=dict(zip(names, r.values, strict=True)),
        stderr=stderr_of(r.record.stderr, names),
        feasible=r.feasible,
        duplicate_of=r.record.duplicate_of,
        stopped_by=r.record.stopped_by,
    )


def _place_baselines(
    baselines: list[Baseline],
    front: Sequence[Row],
    held: Mapping[str, dict[str, float]],
    held_se: Mapping[str, dict[str, float | None]],
    names: Sequence[str],
    directions: Sequence[str],
) -> None:
    """Each baseline's held-out re-score and where it stands against the front (in place)."""
    for b in baselines:
        b.heldout = held.get(b.plan_key)
        b.heldout_stderr = held_se.get(b.plan_key)
        point = [b.values[n] for n in names]
        b.dominated_by = [r.number for r in front if dominates(r.values, point, directions)]
        b.dominates = [r.number for r in front if dominates(point, r.values, directions)]
        b.on_front = any(b.trial == r.number or b.plan_key == r.plan_key for r in front)


def _hypervolume(view: StudyView, front: Sequence[Row]) -> Hypervolume:
    """The front's hypervolume and its history over the distinct feasible trials."""
    distinct = view.distinct_feasible()
    values = [r.values for r in distinct]
    ref = reference_point(values, view.directions)
    history = hypervolume_history(values, view.directions, ref)
    return Hypervolume(
        reference=dict(zip(view.names, (float(x) for x in ref), strict=True)),
        value=hypervolume([r.values for r in front], view.directions, ref),
        history=[HypervolumePoint(r.number, h) for r, h in zip(distinct, history, strict=True)],
    )


def cannot_tell_apart(view: StudyView, front: list[Any]) -> dict[int, list[int]]:
    """Per front trial, the other front trials the data cannot tell it apart from: on every
    objective the paired difference (same examples, :func:`evaluators.stats.paired_difference`)
    is within ``TELL_APART_SE`` of its standard error. Trials without per-example values: none."""
    decoded = {r.number: r.record.per_example() for r in front if r.record.examples}
    if not decoded:
        return {}
    objectives = paired_objectives(
        view.cfg.split_objectives("search"), list(next(iter(decoded.values())))
    )
    if any(o is None for o in objectives):
        return {}

    def close(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        for o in objectives:
            if any(len(a.get(t.key, ())) != len(b.get(t.key, ())) for t in o.terms):
                return False  # scored on other examples: no paired comparison
            d, se = paired_difference(o, a, b)
            if abs(d) > TELL_APART_SE * se:
                return False
        return True

    out: dict[int, list[int]] = {}
    # |d| and its SE are symmetric in a and b; pairs come in front order, so each list does too
    for a, b in combinations(decoded, 2):
        if close(decoded[a], decoded[b]):
            out.setdefault(a, []).append(b)
            out.setdefault(b, []).append(a)
    return out


def _examples_per_task(
    front: Sequence[Row], heldout_scores: Mapping[str, SplitScores]
) -> dict[str, dict[str, int]]:
    """How many examples each score of the report rests on: ``{"search": {"task/metric": n},
    "heldout": {...}}`` (from the recorded per-example values; empty for older studies)."""
    search = front[0].record.examples if front else {}
    first = next(iter(heldout_scores.values()), None)
    held = first.examples if first is not None else {}
    return {
        "search": {k: int(v["n"]) for k, v in search.items()},
        "heldout": {k: int(v["n"]) for k, v in held.items()},
    }


def _save_to_dashboard(view: StudyView, report: Report) -> None:
    """Store the hypervolume history as a plotly figure shown by optuna-dashboard."""

    save_plotly_graph_object(
        view.study, hypervolume_figure(report), graph_object_id=DASHBOARD_GRAPH_ID
    )


def pareto(
    config: str | Path,
    storage: str | None = None,
    *,
    heldout: bool = True,
    plot: str | Path | None = None,
    runtime_factory: Callable[..., Any] | None = None,
) -> Report:
    """The report of the study of ``config``; also shown in optuna-dashboard and drawn to ``plot``.

    Writes to the study: held-out, test and baseline re-scores are cached in its user attrs
    (:mod:`search.report.scores`); the hypervolume plot and, with a test split, the knee's
    verdict (in the study's note) are saved for optuna-dashboard.

    The plot path is checked before any work (``UserError``).
    """

    plot_path = check_plot_path(plot) if plot else None
    view = open_view(config, storage)
    report = build_report(view, heldout=heldout, runtime_factory=runtime_factory)
    if report.hypervolume is not None:
        _save_to_dashboard(view, report)
    if report.test is not None:
        note_verdict(view, report.test, "the knee")
    if plot_path is not None:
        write_plot(report, plot_path)
    return report
