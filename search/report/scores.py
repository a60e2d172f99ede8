"""Scores the report needs beyond the trials: the inputs, the uniform merge, re-scores on the
held-out and test splits.

Scores computed here are cached in the study so a second run is instant. Optuna does not allow
attributes to be added to finished trials, so the caches are study user attrs keyed by plan key:
``"heldout_scores"`` and ``"test_scores"`` (``{"spec": <hash of that split's tasks>, "scores":
{plan_key: scores}}``) and ``"baseline_scores"`` (search-split scores of inputs that have no seed
trial). Each cached ``scores`` is ``{"objectives", "tasks", "stderr", "task_stderr",
"examples"}``, as a trial records them (per-example values packed by
:mod:`search.study.records`).

The held-out split (``eval.heldout``) is what ``export --knee/--prefer`` choose on; the test
split (``eval.test``) is data neither the search nor that choice saw: the chosen merge and
the inputs are compared there (:func:`compare_on_test`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.engine.plan import MergePlan
from search.engine.registry import METHODS
from search.report.view import StudyView
from search.study.records import STOPPED_ATTR, encode_examples, json_stderr

HELDOUT_ATTR = "heldout_scores"
TEST_ATTR = "test_scores"
BASELINE_ATTR = "baseline_scores"
SPLIT_ATTRS = {"heldout": HELDOUT_ATTR, "test": TEST_ATTR}


def baseline_plans(pool_names: Sequence[str]) -> list[tuple[str, str, MergePlan]]:
    """(label, kind, plan) for the uniform linear average and each input checkpoint alone."""

    params = {p.name: p.default for p in METHODS["linear"].params}
    n = len(pool_names)
    out = [("uniform", "uniform", MergePlan.create("linear", [1.0 / n] * n, params))]
    for i, name in enumerate(pool_names):
        weights = [float(i == j) for j in range(n)]
        out.append((name, "single", MergePlan.create("linear", weights, params)))
    return out


def _scores_dict(scores: Any) -> dict[str, Any]:
    return {
        "objectives": dict(scores.objectives),
        "tasks": dict(scores.tasks),
        "stderr": json_stderr(scores.stderr),
        "task_stderr": json_stderr(scores.task_stderr),
        "examples": encode_examples(scores.examples),
    }


def split_spec_key(cfg: Any, split: str) -> str:
    """The hash a split's cached scores are stored under: its tasks and evaluation settings
    (a changed mapping or limit invalidates the cache)."""
    payload = json.dumps(
        {
            "format": 2,  # 2: standard errors and per-example values cached too
            "objectives": [o.model_dump(mode="json") for o in cfg.split_objectives(split)],
            "eval": cfg.eval_spec(heldout=True).model_dump(mode="json"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def split_configured(cfg: Any, split: str) -> bool:
    """Whether the config maps its tasks to ``split`` (``eval.heldout`` / ``eval.test``)."""
    return bool(cfg.eval.heldout if split == "heldout" else cfg.eval.test)


def heldout_configured(cfg: Any) -> bool:
    return split_configured(cfg, "heldout")


def cached_split(view: StudyView, split: str) -> dict[str, dict]:
    """``{plan_key: scores}`` cached for the config's current tasks of ``split``."""
    cache = view.study.user_attrs.get(SPLIT_ATTRS[split]) or {}
    if not split_configured(view.cfg, split) or cache.get("spec") != split_spec_key(
        view.cfg, split
    ):
        return {}
    return dict(cache.get("scores") or {})


def cached_heldout(view: StudyView) -> dict[str, dict]:
    """``{plan_key: scores}`` held-out scores cached for the config's current held-out tasks."""
    return cached_split(view, "heldout")


def score_split(
    view: StudyView,
    plans: Mapping[str, MergePlan],
    split: str,
    runtime_factory: Callable[..., Any] | None = None,
) -> dict[str, dict]:
    """Scores on ``split`` (``"heldout"`` or ``"test"``) for ``{plan_key: plan}``: cached ones,
    the rest scored and cached in turn."""
    cache = cached_split(view, split)
    missing = {k: p for k, p in plans.items() if k not in cache}
    if missing:
        runtime = _runtime(view.cfg, split, runtime_factory)
        spec = split_spec_key(view.cfg, split)
        what = "held-out" if split == "heldout" else split
        for i, (key, plan) in enumerate(missing.items(), 1):
            print(f"{what} re-scoring {i}/{len(missing)} (plan {key})", file=sys.stderr, flush=True)
            scores, _, _ = runtime.score(plan)
            cache[key] = _scores_dict(scores)
            view.study.set_user_attr(SPLIT_ATTRS[split], {"spec": spec, "scores": cache})
    return {k: cache[k] for k in plans}


def score_heldout(
    view: StudyView,
    plans: Mapping[str, MergePlan],
    runtime_factory: Callable[..., Any] | None = None,
) -> dict[str, dict]:
    """Held-out scores for ``{plan_key: plan}``: cached ones, the rest scored and cached in turn."""
    return score_split(view, plans, "heldout", runtime_factory)


def compare_on_test(
    view: StudyView,
    chosen: Any,
    how: str,
    runtime_factory: Callable[..., Any] | None = None,
) -> dict[str, Any] | None:
    """The chosen merge, the uniform merge and every input checkpoint on the test split.

    Args:
        chosen: the chosen :class:`~search.report.view.Row` (its ``plan`` user attr is scored).
        how: how it was chosen (shown with it).

    Returns:
        ``None`` without ``eval.test``; else ``{"chosen": entry, "baselines": [entry, ...]}``
        with ``entry = {"label", "trial", "plan_key", "objectives", "stderr", "tasks",
        "examples", "mean"}`` (``mean``: mean of the objectives, minimized ones negated;
        ``examples``: examples per task) and, per baseline, ``"kind"`` (``"uniform"`` or
        ``"single"``), ``"diff"``: chosen minus it, per
        objective and on the mean, with ``"diff_se"``: the paired standard errors of those
        differences (the same examples; from the per-example values, ``None`` where an
        objective has none, e.g. perplexity).
    """
    if not split_configured(view.cfg, "test") or "plan" not in chosen.user_attrs:
        return None
    plans = {chosen.plan_key: MergePlan.from_dict(chosen.user_attrs["plan"])}
    labels = baseline_plans(_pool_names(view))
    plans.update({plan.key: plan for _, _, plan in labels})
    scores = score_split(view, plans, "test", runtime_factory)

    def entry(label: str, trial: int | None, key: str) -> dict[str, Any]:
        got = scores[key]
        objectives = {n: float(got["objectives"][n]) for n in view.names}
        return {
            "label": label,
            "trial": trial,
            "plan_key": key,
            "objectives": objectives,
            "stderr": dict(got.get("stderr") or {}),
            "tasks": dict(got["tasks"]),
            # examples per task (or data file), as the evaluator counts them
            "examples": {
                k.split("/")[0]: int(v["n"]) for k, v in (got.get("examples") or {}).items()
            },
            "mean": _signed_mean(objectives, view),
        }

    best = entry(how, chosen.number, chosen.plan_key)
    terms = paired_objectives(view.cfg.split_objectives("test"), scores[chosen.plan_key])
    baselines = []
    for label, kind, plan in labels:
        b = entry(label, None, plan.key)
        b["kind"] = kind  # "uniform" or "single"
        b["diff"] = {n: best["objectives"][n] - b["objectives"][n] for n in view.names}
        b["diff"]["mean"] = best["mean"] - b["mean"]
        b["diff_se"] = _paired_se(terms, scores[chosen.plan_key], scores[plan.key])
        baselines.append(b)
    return {"chosen": best, "baselines": baselines}


def test_verdict(test: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict of a test comparison (:func:`compare_on_test`): the chosen merge's lead on
    the mean of the objectives over the uniform merge, over the best input (highest mean) and
    the smallest lead over any input, each ``{"label", "diff", "se", "z"}`` (``se``/``z``
    ``None`` without per-example values); ``beats_all``: every lead positive."""

    def lead(b: Mapping[str, Any]) -> dict[str, Any]:
        diff, se = b["diff"]["mean"], (b.get("diff_se") or {}).get("mean")
        z = diff / se if se else None
        return {"label": b["label"], "diff": diff, "se": se, "z": z}

    baselines = test["baselines"]
    uniform = next((b for b in baselines if b.get("kind", b["label"]) == "uniform"), None)
    singles = [b for b in baselines if b is not uniform]
    out: dict[str, Any] = {"uniform": lead(uniform) if uniform else None}
    out["best_input"] = lead(max(singles, key=lambda b: b["mean"])) if singles else None
    out["weakest_lead"] = lead(min(singles, key=lambda b: b["diff"]["mean"])) if singles else None
    out["beats_all"] = all(b["diff"]["mean"] > 0 for b in baselines)
    return out


def paired_objectives(objectives: Sequence[Any], scored: Mapping[str, Any]) -> list[Any]:
    """Each lm-eval objective as weighted score keys (``None`` for one without such keys)."""
    from search.study.racing import Objective, Term

    keys = list(scored.get("examples") or {})
    out: list[Any] = []
    for obj in objectives:
        found = []
        for ref in obj.tasks:
            match = [
                k
                for k in keys
                if k == f"{ref.task}/{ref.metric}"
                or (ref.metric is None and k.startswith(f"{ref.task}/"))
            ]
            found.extend(Term(k, ref.weight) for k in match[:1])
        ok = obj.evaluator == "lm_eval" and len(found) == len(obj.tasks)
        out.append(Objective(obj.name, obj.direction == "maximize", tuple(found)) if ok else None)
    return out


def _paired_se(
    objectives: Sequence[Any], chosen: Mapping[str, Any], other: Mapping[str, Any]
) -> dict[str, float | None]:
    """Paired standard errors of chosen − other per objective and on their mean (disjoint
    tasks: the objectives' differences are independent)."""
    from search.study.racing import paired_difference
    from search.study.records import decode_examples

    a, b = (
        decode_examples(chosen.get("examples") or {}),
        decode_examples(other.get("examples") or {}),
    )
    out: dict[str, float | None] = {}
    for obj in objectives:
        if obj is not None and all(t.key in a and t.key in b for t in obj.terms):
            values_a = {t.key: np.asarray(a[t.key], float) for t in obj.terms}
            values_b = {t.key: np.asarray(b[t.key], float) for t in obj.terms}
            out[obj.name] = paired_difference(obj, values_a, values_b)[1]
    known = [v for v in out.values() if v is not None]
    names = [o.name for o in objectives if o is not None]
    out["mean"] = (
        (sum(v * v for v in known) ** 0.5 / len(objectives))
        if len(known) == len(objectives) and names
        else None
    )
    return out


def _signed_mean(objectives: Mapping[str, float], view: StudyView) -> float:
    signed = [
        v if d == "maximize" else -v
        for v, d in zip(objectives.values(), view.directions, strict=True)
    ]
    return sum(signed) / len(signed)


def find_baselines(
    view: StudyView, runtime_factory: Callable[..., Any] | None = None
) -> list[dict[str, Any]]:
    """The inputs' and the uniform merge's search scores: from seed trials, else scored here."""
    found: dict[str, dict[str, Any]] = {}
    for row in view.rows:
        tag = row.user_attrs.get("seed_trial")
        if not isinstance(tag, str) or (tag != "uniform" and not tag.startswith("single:")):
            continue
        kind, _, name = tag.partition(":")
        label = name if kind == "single" else "uniform"
        found.setdefault(
            label,
            {
                "label": label,
                "kind": kind,
                "trial": row.number,
                "plan_key": row.plan_key,
                "plan": MergePlan.from_dict(row.user_attrs["plan"])
                if "plan" in row.user_attrs
                else None,
                "values": dict(zip(view.names, row.values, strict=True)),
                "stderr": stderr_of(row.user_attrs, view.names),
            },
        )
    pool_names = _pool_names(view)
    missing = []
    if any(label not in found for label in ("uniform", *pool_names)):  # (imports torch)
        missing = [
            (lb, kind, plan) for lb, kind, plan in baseline_plans(pool_names) if lb not in found
        ]
    if missing:
        cache = dict(view.study.user_attrs.get(BASELINE_ATTR) or {})
        runtime = None
        for label, kind, plan in missing:
            if plan.key not in cache:
                runtime = runtime or _runtime(view.cfg, "search", runtime_factory)
                print(f"scoring baseline {label!r} (no seed trial)", file=sys.stderr, flush=True)
                scores, _, _ = runtime.score(plan)
                cache[plan.key] = _scores_dict(scores)
                view.study.set_user_attr(BASELINE_ATTR, cache)
            objectives = cache[plan.key]["objectives"]
            found[label] = {
                "label": label,
                "kind": kind,
                "trial": None,
                "plan_key": plan.key,
                "plan": plan,
                "values": {n: float(objectives[n]) for n in view.names},
                "stderr": stderr_of(cache[plan.key], view.names),
            }
    order = ["uniform", *pool_names]
    return sorted(
        found.values(), key=lambda b: order.index(b["label"]) if b["label"] in order else 99
    )


def uniform_values(
    view: StudyView, split: str, runtime_factory: Callable[..., Any] | None = None
) -> list[float]:
    """The uniform merge's objective values on ``split`` (``"search"`` or ``"heldout"``): the
    reference ``export --knee`` / ``--prefer`` measure leads from.

    Search split: the ``uniform`` seed trial, else scored once and cached as a baseline (as
    :func:`find_baselines`); held-out split: scored once and cached (:func:`score_heldout`).
    """
    label, _kind, plan = baseline_plans(_pool_names(view))[0]
    if split == "heldout":
        got = score_heldout(view, {plan.key: plan}, runtime_factory)[plan.key]
        return [float(got["objectives"][n]) for n in view.names]
    for row in view.rows:
        if STOPPED_ATTR not in row.user_attrs and (
            row.plan_key == plan.key or _is_uniform(row.user_attrs.get("plan"), plan)
        ):
            return list(row.values)
    cache = dict(view.study.user_attrs.get(BASELINE_ATTR) or {})
    if plan.key not in cache:
        runtime = _runtime(view.cfg, "search", runtime_factory)
        print("scoring baseline 'uniform' (no seed trial)", file=sys.stderr, flush=True)
        scores, _, _ = runtime.score(plan)
        cache[plan.key] = _scores_dict(scores)
        view.study.set_user_attr(BASELINE_ATTR, cache)
    return [float(cache[plan.key]["objectives"][n]) for n in view.names]


def _is_uniform(recorded: Mapping[str, Any] | None, uniform: MergePlan) -> bool:
    """Whether a trial's recorded plan is the uniform merge: linear with the uniform plan's
    params and one equal positive weight everywhere (any scale: the weights are normalized)."""
    if not recorded:
        return False
    plan = MergePlan.from_dict(recorded)
    weights = {w for row in plan.weights for w in row}
    return (
        plan.method == uniform.method
        and dict(plan.params) == dict(uniform.params)
        and len(plan.weights) == len(uniform.weights)
        and len(weights) == 1
        and next(iter(weights)) > 0
    )


def stderr_of(record: Mapping[str, Any], names: Sequence[str]) -> dict[str, float | None]:
    """Each objective's standard error from a trial's user attrs or a cached score record
    (``None`` where not recorded: trials of studies made before standard errors were kept)."""
    stderr = record.get("stderr") or {}
    return {n: stderr.get(n) for n in names}


def _pool_names(view: StudyView) -> list[str]:
    """Checkpoint names as the study recorded them (fingerprint), else folder basenames."""
    fingerprint = view.study.user_attrs.get("fingerprint") or {}
    names = [c["name"] for c in fingerprint.get("checkpoints", []) if isinstance(c, Mapping)]
    return names or [Path(p).name for p in view.cfg.checkpoints]


def _runtime(cfg: Any, split: str, factory: Callable[..., Any] | None) -> Any:
    """A runtime scoring ``split`` (``factory(cfg, heldout=...)``; the test split by
    ``factory(cfg, split="test")``)."""
    if factory is None:
        from search.study.worker import Runtime

        factory = Runtime.create
    if split == "test":
        return factory(cfg, split="test")
    return factory(cfg, heldout=split == "heldout")
