"""``merge-search pareto``'s report: one dict built from the study, drawn as a table or plot.

:func:`build_report` builds one report dict from the study's trials: the front (feasible
trials only, one row per distinct plan), its knee (judged on the held-out re-scores when the
study has held-out tasks, as ``export --knee`` chooses it), held-out re-scores, the input
checkpoints' and the uniform merge's scores, the test split comparison of the knee with the
inputs (``eval.test``), and the hypervolume history. Every value comes with its standard error
(``"stderr"`` beside ``"values"``, ``"heldout_stderr"`` beside ``"heldout"``; ``None`` for
trials recorded without one) and ``"examples"`` says how many examples each task score rests
on. The table, the ``--json`` output
and the plots are all drawn from that dict; :func:`pareto` also stores the hypervolume history
in optuna-dashboard and writes the plot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import combinations
from pathlib import Path
from typing import Any

from optuna_dashboard import save_plotly_graph_object

from search.engine.plan import MergePlan
from search.errors import UserError
from search.report.pareto import dominates, hypervolume, hypervolume_history, reference_point
from search.report.plots import check_plot_path, hypervolume_figure, write_plot
from search.report.scores import (
    compare_on_test,
    find_baselines,
    heldout_configured,
    paired_objectives,
    score_heldout,
    split_configured,
    stderr_of,
)
from search.report.view import StudyView, open_view
from search.study.records import EXAMPLES_ATTR, STOPPED_ATTR, decode_examples

TELL_APART_SE = 2.0  # two front points differ when some objective's paired gap exceeds 2 SEs

DASHBOARD_GRAPH_ID = "merge-search-hypervolume"


def build_report(
    view: StudyView, *, heldout: bool = True, runtime_factory: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """Everything ``merge-search pareto`` shows, as JSON-able data.

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
            -v if d == "maximize" else v for v, d in zip(r.values, directions, strict=True)
        ]
    )
    baselines = find_baselines(view, runtime_factory)
    uniform = next((b for b in baselines if b["kind"] == "uniform"), None)
    reference = [uniform["values"][n] for n in names] if uniform else None
    knee = view.knee(front, reference)

    heldout_scores: dict[str, dict] = {}
    heldout_note = None
    if not heldout:
        heldout_note = "skipped (--no-heldout)"
    elif not heldout_configured(view.cfg):
        heldout_note = "no held-out tasks in the config (eval.heldout)"
    else:
        plans = {
            r.plan_key: MergePlan.from_dict(r.user_attrs["plan"])
            for r in front
            if "plan" in r.user_attrs
        }
        plans.update({b["plan_key"]: b["plan"] for b in baselines if b["plan"] is not None})
        heldout_scores = score_heldout(view, plans, runtime_factory)

    def held(key: str) -> dict[str, float] | None:
        scores = heldout_scores.get(key)
        return {n: float(scores["objectives"][n]) for n in names} if scores else None

    def held_stderr(key: str) -> dict[str, float | None] | None:
        scores = heldout_scores.get(key)
        return stderr_of(scores, names) if scores else None

    search_knee = knee
    knee_split = "search"
    by_key = {r.plan_key: [held(r.plan_key)[n] for n in names] for r in front if held(r.plan_key)}
    held_uniform = held(uniform["plan_key"]) if uniform else None
    if by_key:  # as `export --knee` chooses: the front judged on its held-out re-scores
        held_reference = [held_uniform[n] for n in names] if held_uniform else None
        knee, knee_split = view.knee_on(front, by_key, held_reference), "heldout"
    test = None
    test_note = None
    if not heldout:
        test_note = "skipped (--no-heldout)"
    elif not split_configured(view.cfg, "test"):
        test_note = "no test tasks in the config (eval.test)"
    else:
        how = "knee of the Pareto front" + (" on held-out re-scores" if by_key else "")
        test = compare_on_test(view, knee, how, runtime_factory)

    indistinct = cannot_tell_apart(view, front)
    front_rows = [
        {
            "trial": r.number,
            "values": dict(zip(names, r.values, strict=True)),
            "stderr": stderr_of(r.user_attrs, names),
            "heldout": held(r.plan_key),
            "heldout_stderr": held_stderr(r.plan_key),
            "knee": r is knee,
            "plan_key": r.plan_key,
            "coefficients": r.user_attrs.get("coefficients"),
            "params": r.user_attrs.get("params"),
            "task_scores": r.user_attrs.get("task_scores"),
            "indistinct_from": indistinct.get(r.number, []),
        }
        for r in front
    ]
    for b in baselines:
        b["heldout"] = held(b["plan_key"])
        b["heldout_stderr"] = held_stderr(b["plan_key"])
        point = [b["values"][n] for n in names]
        b["dominated_by"] = [r.number for r in front if dominates(r.values, point, directions)]
        b["dominates"] = [r.number for r in front if dominates(point, r.values, directions)]
        b["on_front"] = any(b["trial"] == r.number or b["plan_key"] == r.plan_key for r in front)
        b.pop("plan")

    distinct = view.distinct_feasible()
    report: dict[str, Any] = {
        "study": view.cfg.name,
        "storage": view.storage_url,
        "objectives": [{"name": n, "direction": d} for n, d in zip(names, directions, strict=True)],
        "trial_counts": dict(view.counts),
        "knee_trial": knee.number,
        "examples": _examples_per_task(front, heldout_scores),
        "knee_split": knee_split,  # the split the knee was judged on: "heldout" or "search"
        "search_knee_trial": search_knee.number,
        "front": front_rows,
        "baselines": baselines,
        "heldout_note": heldout_note,
        "test": test,
        "test_note": test_note,
        "trials": [
            {
                "trial": r.number,
                "values": dict(zip(names, r.values, strict=True)),
                "stderr": stderr_of(r.user_attrs, names),
                "feasible": r.feasible,
                "duplicate_of": r.user_attrs.get("duplicate_of"),
                "stopped_by": r.user_attrs.get(STOPPED_ATTR),
                "rung": r.user_attrs.get("rung"),
            }
            for r in view.rows
        ],
        "hypervolume": None,
    }
    if len(names) > 1:
        values = [r.values for r in distinct]
        ref = reference_point(values, directions)
        history = hypervolume_history(values, directions, ref)
        report["hypervolume"] = {
            "reference": dict(zip(names, (float(x) for x in ref), strict=True)),
            "value": hypervolume([r.values for r in front], directions, ref),
            "history": [
                {"trial": r.number, "hypervolume": h}
                for r, h in zip(distinct, history, strict=True)
            ],
        }
    return report


def cannot_tell_apart(view: StudyView, front: list[Any]) -> dict[int, list[int]]:
    """Per front trial, the other front trials the data cannot tell it apart from: on every
    objective the paired difference (same examples, :func:`search.study.racing.paired_difference`)
    is within ``TELL_APART_SE`` of its standard error. Trials without per-example values: none."""
    from search.study.racing import paired_difference

    decoded = {
        r.number: decode_examples(r.user_attrs[EXAMPLES_ATTR])
        for r in front
        if r.user_attrs.get(EXAMPLES_ATTR)
    }
    if not decoded:
        return {}
    objectives = paired_objectives(view.cfg.objectives, {"examples": next(iter(decoded.values()))})
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
    front: list[Any], heldout_scores: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, int]]:
    """How many examples each score of the report rests on: ``{"search": {"task/metric": n},
    "heldout": {...}}`` (from the recorded per-example values; empty for older studies)."""
    search = (front[0].user_attrs.get(EXAMPLES_ATTR) or {}) if front else {}
    held = next(iter(heldout_scores.values()), {}).get("examples") or {}
    return {
        "search": {k: int(v["n"]) for k, v in search.items()},
        "heldout": {k: int(v["n"]) for k, v in held.items()},
    }


def _save_to_dashboard(view: StudyView, report: Mapping[str, Any]) -> None:
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
) -> dict[str, Any]:
    """The report of the study of ``config``; also shown in optuna-dashboard and drawn to ``plot``.

    The plot path is checked before any work (``UserError``).
    """

    plot_path = check_plot_path(plot) if plot else None
    view = open_view(config, storage)
    report = build_report(view, heldout=heldout, runtime_factory=runtime_factory)
    if report["hypervolume"]:
        _save_to_dashboard(view, report)
    if plot_path is not None:
        write_plot(report, plot_path)
    return report
