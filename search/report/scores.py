"""Scores the report needs beyond the trials: the inputs, the uniform merge, re-scores on the
held-out and test splits.

Scores computed here are cached in the study so a second run is instant. Optuna does not allow
attributes to be added to finished trials, so the caches are study user attrs keyed by plan key:
``"heldout_scores"`` and ``"test_scores"`` (``{"spec": <hash of that split's tasks>, "scores":
{plan_key: scores}}``) and ``"baseline_scores"`` (search-split scores of inputs that have no seed
trial). Each cached score is a :class:`SplitScores` as JSON (per-example values packed as a
trial's record packs them, :mod:`search.study.record`).

The held-out split (``eval.heldout``) is what ``export --knee/--prefer`` choose on; the test
split (``eval.test``) is data neither the search nor that choice saw: the chosen merge and
the inputs are compared there (:func:`compare_on_test`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.stats import Objective, Term, paired_difference
from search.engine.plan import MergePlan
from search.engine.registry import METHODS
from search.report.view import StudyView
from search.study.record import decode_examples, encode_examples, json_stderr
from search.study.storage import FINGERPRINT_ATTR, check_fingerprint

log = logging.getLogger(__name__)  # progress of long re-scoring; the CLI shows it on stderr

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


@dataclass(frozen=True)
class SplitScores:
    """A merge's scores on one split, as the study caches them (JSON, like a trial's record)."""

    objectives: dict[str, float]
    tasks: dict[str, float]
    stderr: dict[str, float | None] = field(default_factory=dict)
    task_stderr: dict[str, float | None] = field(default_factory=dict)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)  # packed per-example values

    @classmethod
    def of(cls, scores: Any) -> SplitScores:
        """From an evaluator's ``Scores``."""
        return cls(
            objectives=dict(scores.objectives),
            tasks=dict(scores.tasks),
            stderr=json_stderr(scores.stderr),
            task_stderr=json_stderr(scores.task_stderr),
            examples=encode_examples(scores.examples),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SplitScores:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def counts(self) -> dict[str, int]:
        """Examples per task (or data file), as the evaluator counted them."""
        return {k.split("/")[0]: int(v["n"]) for k, v in self.examples.items()}


@dataclass
class Baseline:
    """The uniform merge or one input checkpoint, beside the front (its search scores; where it
    stands against the front is filled in by the report)."""

    label: str  # "uniform" or the checkpoint's name
    kind: str  # "uniform" | "single"
    trial: int | None  # its seed trial; None when scored here
    plan_key: str
    values: dict[str, float]
    stderr: dict[str, float | None]
    heldout: dict[str, float] | None = None
    heldout_stderr: dict[str, float | None] | None = None
    dominated_by: list[int] = field(default_factory=list)
    dominates: list[int] = field(default_factory=list)
    on_front: bool = False


@dataclass(frozen=True)
class VerdictEntry:
    """One merge on the test split: its objectives, the mean over them (minimized ones negated)
    and, for a baseline, the chosen merge's lead over it with its paired standard errors."""

    label: str
    trial: int | None
    plan_key: str
    objectives: dict[str, float]
    stderr: dict[str, float | None]
    tasks: dict[str, float]
    examples: dict[str, int]  # examples per task
    mean: float
    kind: str = "chosen"  # "chosen", "uniform" or "single"
    diff: dict[str, float] | None = None  # chosen − it, per objective and "mean"
    diff_se: dict[str, float | None] | None = None  # paired SEs of those differences


@dataclass(frozen=True)
class Verdict:
    """The chosen merge against the uniform merge and every input, on the test split."""

    chosen: VerdictEntry
    baselines: list[VerdictEntry]


@dataclass(frozen=True)
class Lead:
    """The chosen merge's lead over one baseline on the mean of the objectives (test split)."""

    label: str
    diff: float
    se: float | None  # paired standard error (None without per-example values)
    z: float | None  # diff / se


@dataclass(frozen=True)
class Leads:
    """What the test split says of the chosen merge, in short (:func:`verdict`)."""

    uniform: Lead | None  # over the uniform merge
    best_input: Lead | None  # over the input with the highest mean
    weakest_lead: Lead | None  # the smallest lead over any input
    beats_all: bool  # every lead positive


def split_spec_key(cfg: Any, split: str) -> str:
    """The hash a split's cached scores are stored under: its tasks and evaluation settings
    (a changed mapping or limit invalidates the cache)."""
    payload = json.dumps(
        {
            "format": 2,  # 2: standard errors and per-example values cached too
            "objectives": [o.model_dump(mode="json") for o in cfg.split_objectives(split)],
            "eval": cfg.eval_spec().model_dump(mode="json"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def split_configured(cfg: Any, split: str) -> bool:
    """Whether the config maps its tasks to ``split`` (``eval.heldout`` / ``eval.test``)."""
    return bool(cfg.eval.heldout if split == "heldout" else cfg.eval.test)


def heldout_configured(cfg: Any) -> bool:
    return split_configured(cfg, "heldout")


def cached_split(view: StudyView, split: str) -> dict[str, SplitScores]:
    """``{plan_key: scores}`` cached for the config's current tasks of ``split``."""
    cache = view.study.user_attrs.get(SPLIT_ATTRS[split]) or {}
    if not split_configured(view.cfg, split) or cache.get("spec") != split_spec_key(
        view.cfg, split
    ):
        return {}
    return {k: SplitScores.from_json(v) for k, v in (cache.get("scores") or {}).items()}


def cached_heldout(view: StudyView) -> dict[str, SplitScores]:
    """``{plan_key: scores}`` held-out scores cached for the config's current held-out tasks."""
    return cached_split(view, "heldout")


def score_split(
    view: StudyView,
    plans: Mapping[str, MergePlan],
    split: str,
    runtime_factory: Callable[..., Any] | None = None,
) -> dict[str, SplitScores]:
    """Scores on ``split`` (``"heldout"`` or ``"test"``) for ``{plan_key: plan}``: cached ones,
    the rest scored and cached in turn."""
    cache = cached_split(view, split)
    missing = {k: p for k, p in plans.items() if k not in cache}
    if missing:
        runtime = _runtime(view, split, runtime_factory)
        spec = split_spec_key(view.cfg, split)
        what = "held-out" if split == "heldout" else split
        for i, (key, plan) in enumerate(missing.items(), 1):
            log.info("%s re-scoring %d/%d (plan %s)", what, i, len(missing), key)
            scores, _, _ = runtime.score(plan)
            cache[key] = SplitScores.of(scores)
            stored = {k: v.to_json() for k, v in cache.items()}
            view.study.set_user_attr(SPLIT_ATTRS[split], {"spec": spec, "scores": stored})
    return {k: cache[k] for k in plans}


def score_heldout(
    view: StudyView,
    plans: Mapping[str, MergePlan],
    runtime_factory: Callable[..., Any] | None = None,
) -> dict[str, SplitScores]:
    """Held-out scores for ``{plan_key: plan}``: cached ones, the rest scored and cached in turn."""
    return score_split(view, plans, "heldout", runtime_factory)


def compare_on_test(
    view: StudyView,
    chosen: Any,
    how: str,
    runtime_factory: Callable[..., Any] | None = None,
) -> Verdict | None:
    """The chosen merge, the uniform merge and every input checkpoint on the test split.

    Args:
        chosen: the chosen :class:`~search.report.view.Row` (its recorded plan is scored).
        how: how it was chosen (shown with it).

    Returns:
        ``None`` without ``eval.test``; else each baseline with the chosen merge's lead over it
        per objective and on the mean, and the paired standard errors of those leads (the same
        examples; ``None`` where an objective has no per-example values, e.g. perplexity).
    """
    if not split_configured(view.cfg, "test") or chosen.record.plan is None:
        return None
    plans = {chosen.plan_key: MergePlan.from_dict(chosen.record.plan)}
    labels = baseline_plans(_pool_names(view))
    plans.update({plan.key: plan for _, _, plan in labels})
    scores = score_split(view, plans, "test", runtime_factory)

    def entry(label: str, trial: int | None, key: str, **lead: Any) -> VerdictEntry:
        got = scores[key]
        objectives = {n: float(got.objectives[n]) for n in view.names}
        return VerdictEntry(
            label=label,
            trial=trial,
            plan_key=key,
            objectives=objectives,
            stderr=dict(got.stderr),
            tasks=dict(got.tasks),
            examples=got.counts(),
            mean=_signed_mean(objectives, view),
            **lead,
        )

    best = entry(how, chosen.number, chosen.plan_key)
    keys = list(scores[chosen.plan_key].examples)
    terms = paired_objectives(view.cfg.split_objectives("test"), keys)
    baselines = []
    for label, kind, plan in labels:
        b = entry(label, None, plan.key, kind=kind)
        diff = {n: best.objectives[n] - b.objectives[n] for n in view.names}
        diff["mean"] = best.mean - b.mean
        se = _paired_se(terms, scores[chosen.plan_key], scores[plan.key])
        baselines.append(dataclasses.replace(b, diff=diff, diff_se=se))
    return Verdict(best, baselines)


def verdict(test: Verdict) -> Leads:
    """The chosen merge's lead on the mean of the objectives over the uniform merge, over the
    best input (the highest mean) and the smallest lead over any input, each with its paired
    standard error; ``beats_all``: every lead positive."""

    def lead(b: VerdictEntry) -> Lead:
        diff, se = (b.diff or {})["mean"], (b.diff_se or {}).get("mean")
        return Lead(b.label, diff, se, diff / se if se else None)

    uniform = next((b for b in test.baselines if b.kind == "uniform"), None)
    singles = [b for b in test.baselines if b.kind == "single"]
    return Leads(
        uniform=lead(uniform) if uniform else None,
        best_input=lead(max(singles, key=lambda b: b.mean)) if singles else None,
        weakest_lead=lead(min(singles, key=lambda b: (b.diff or {})["mean"])) if singles else None,
        beats_all=all((b.diff or {})["mean"] > 0 for b in test.baselines),
    )


def paired_objectives(objectives: Sequence[Any], keys: Sequence[str]) -> list[Any]:
    """Each lm-eval objective as weighted score keys (``None`` for one without such keys):
    ``keys`` are the ``task/metric`` keys of the per-example values a merge recorded."""
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
    objectives: Sequence[Any], chosen: SplitScores, other: SplitScores
) -> dict[str, float | None]:
    """Paired standard errors of chosen − other per objective and on their mean (disjoint
    tasks: the objectives' differences are independent)."""
    a, b = decode_examples(chosen.examples), decode_examples(other.examples)
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
) -> tuple[list[Baseline], dict[str, MergePlan]]:
    """The inputs' and the uniform merge's search scores (from seed trials, else scored here),
    and their plans by plan key."""
    found: dict[str, Baseline] = {}
    plans: dict[str, MergePlan] = {}
    for row in view.rows:
        tag = row.record.seed_trial
        if not isinstance(tag, str) or (tag != "uniform" and not tag.startswith("single:")):
            continue
        kind, _, name = tag.partition(":")
        label = name if kind == "single" else "uniform"
        if label in found:
            continue
        found[label] = Baseline(
            label=label,
            kind=kind,
            trial=row.number,
            plan_key=row.plan_key,
            values=dict(zip(view.names, row.values, strict=True)),
            stderr=stderr_of(row.record.stderr, view.names),
        )
        if row.record.plan:
            plans[row.plan_key] = MergePlan.from_dict(row.record.plan)
    pool_names = _pool_names(view)
    missing = []
    if any(label not in found for label in ("uniform", *pool_names)):  # (imports torch)
        missing = [
            (lb, kind, plan) for lb, kind, plan in baseline_plans(pool_names) if lb not in found
        ]
    if missing:
        got_all = _search_scores(
            view, [(label, plan) for label, _, plan in missing], runtime_factory
        )
        for label, kind, plan in missing:
            got = got_all[plan.key]
            found[label] = Baseline(
                label=label,
                kind=kind,
                trial=None,
                plan_key=plan.key,
                values={n: float(got.objectives[n]) for n in view.names},
                stderr=stderr_of(got.stderr, view.names),
            )
            plans[plan.key] = plan
    order = ["uniform", *pool_names]
    ranked = sorted(found.values(), key=lambda b: order.index(b.label) if b.label in order else 99)
    return ranked, plans


def _search_scores(
    view: StudyView,
    plans: Sequence[tuple[str, MergePlan]],
    runtime_factory: Callable[..., Any] | None,
) -> dict[str, SplitScores]:
    """Search-split scores of baseline plans that no trial scored: cached in the study's
    ``baseline_scores``, the missing ones scored (one runtime for all of them)."""
    cache = dict(view.study.user_attrs.get(BASELINE_ATTR) or {})
    runtime = None
    for label, plan in plans:
        if plan.key not in cache:
            runtime = runtime or _runtime(view, "search", runtime_factory)
            log.info("scoring baseline %r (no seed trial)", label)
            scores, _, _ = runtime.score(plan)
            cache[plan.key] = SplitScores.of(scores).to_json()
            view.study.set_user_attr(BASELINE_ATTR, cache)
    return {plan.key: SplitScores.from_json(cache[plan.key]) for _, plan in plans}


def uniform_values(
    view: StudyView, split: str, runtime_factory: Callable[..., Any] | None = None
) -> list[float]:
    """The uniform merge's objective values on ``split`` (``"search"`` or ``"heldout"``): the
    reference ``export --knee`` / ``--prefer`` measure leads from.

    Search split: a trial that merged it (by plan key, or equal weights, any scale), else scored
    once and cached as a baseline; held-out split: scored once and cached (:func:`score_heldout`).
    """
    label, _kind, plan = baseline_plans(_pool_names(view))[0]
    if split == "heldout":
        got = score_heldout(view, {plan.key: plan}, runtime_factory)[plan.key]
        return [float(got.objectives[n]) for n in view.names]
    for row in view.rows:
        if not row.record.stopped and (
            row.plan_key == plan.key or _is_uniform(row.record.plan, plan)
        ):
            return list(row.values)
    got = _search_scores(view, [(label, plan)], runtime_factory)[plan.key]
    return [float(got.objectives[n]) for n in view.names]


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


def stderr_of(stderr: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, float | None]:
    """Each objective's standard error (``None`` where not recorded: trials of studies made
    before standard errors were kept)."""
    return {n: (stderr or {}).get(n) for n in names}


def _pool_names(view: StudyView) -> list[str]:
    """Checkpoint names as the study recorded them (fingerprint), else folder basenames."""
    fingerprint = view.study.user_attrs.get(FINGERPRINT_ATTR) or {}
    names = [c["name"] for c in fingerprint.get("checkpoints", []) if isinstance(c, Mapping)]
    return names or [Path(p).name for p in view.cfg.checkpoints]


def _runtime(view: StudyView, split: str, factory: Callable[..., Any] | None) -> Any:
    """A runtime scoring ``split``: ``factory(cfg, split)`` (default ``Runtime.create``),
    refused when its checkpoints are not the files the study scored (whole-content
    fingerprint): re-scores would be cached under other weights."""
    cfg = view.cfg
    if factory is None:
        from search.study.worker import Runtime

        factory = Runtime.create
    runtime = factory(cfg, split)
    pool = getattr(runtime, "pool", None)
    if pool is not None:
        check_fingerprint(
            view.study,
            pool.identity.fingerprint(),
            f"study {cfg.name!r}",
            "re-scoring other weights under its trials is refused; restore the files or use a "
            "new study",
        )
    return runtime
