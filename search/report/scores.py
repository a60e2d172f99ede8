"""Scores the report needs beyond the trials: the inputs, the uniform merge, held-out re-scores.

Scores computed here are cached in the study so a second run is instant. Optuna does not allow
attributes to be added to finished trials, so the caches are study user attrs keyed by plan key:
``"heldout_scores"`` (``{"spec": <hash of the held-out tasks>, "scores": {plan_key: scores}}``)
and ``"baseline_scores"`` (search-split scores of inputs that have no seed trial). Each cached
``scores`` is ``{"objectives", "tasks", "stderr", "task_stderr", "examples"}``, as a trial
records them (per-example values packed by :mod:`search.study.records`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from search.engine.plan import MergePlan
from search.engine.registry import METHODS
from search.report.view import StudyView
from search.study.records import encode_examples, json_stderr

HELDOUT_ATTR = "heldout_scores"
BASELINE_ATTR = "baseline_scores"


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


def _heldout_spec_key(cfg: Any) -> str:
    payload = json.dumps(
        {
            "format": 2,  # 2: standard errors and per-example values cached too
            "objectives": [o.model_dump(mode="json") for o in cfg.heldout_objectives()],
            "eval": cfg.eval_spec(heldout=True).model_dump(mode="json"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def heldout_configured(cfg: Any) -> bool:
    return bool(cfg.eval.heldout)


def cached_heldout(view: StudyView) -> dict[str, dict]:
    """``{plan_key: scores}`` held-out scores cached for the config's current held-out tasks."""
    cache = view.study.user_attrs.get(HELDOUT_ATTR) or {}
    if not heldout_configured(view.cfg) or cache.get("spec") != _heldout_spec_key(view.cfg):
        return {}
    return dict(cache.get("scores") or {})


def score_heldout(
    view: StudyView,
    plans: Mapping[str, MergePlan],
    runtime_factory: Callable[..., Any] | None = None,
) -> dict[str, dict]:
    """Held-out scores for ``{plan_key: plan}``: cached ones, the rest scored and cached in turn."""
    cache = cached_heldout(view)
    missing = {k: p for k, p in plans.items() if k not in cache}
    if missing:
        runtime = _runtime(view.cfg, True, runtime_factory)
        spec = _heldout_spec_key(view.cfg)
        for i, (key, plan) in enumerate(missing.items(), 1):
            print(
                f"held-out re-scoring {i}/{len(missing)} (plan {key})", file=sys.stderr, flush=True
            )
            scores, _, _ = runtime.score(plan)
            cache[key] = _scores_dict(scores)
            view.study.set_user_attr(HELDOUT_ATTR, {"spec": spec, "scores": cache})
    return {k: cache[k] for k in plans}


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
                runtime = runtime or _runtime(view.cfg, False, runtime_factory)
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


def _runtime(cfg: Any, heldout: bool, factory: Callable[..., Any] | None) -> Any:
    if factory is None:
        from search.study.worker import Runtime

        factory = Runtime.create
    return factory(cfg, heldout=heldout)
