"""lm-eval's output of one call -> :class:`~evaluators.base.Scores`.

Task and group scores are lm-eval's own (a group's is its ``aggregate_metric_list`` result,
computed by lm-eval). Per-example values and standard errors come from the logged samples
(:mod:`evaluators.stats`):

- a leaf task's values: its per-sample metric values for the metric's filter, ascending
  ``doc_id``; its SE from the task's aggregation;
- a group's values: its leaf tasks' values concatenated in the group's task order (lm-eval's
  ``Group.get_all_tasks()``: the ``task:`` list, nested groups depth-first); its SE from the
  leaf SEs with lm-eval's own group formulas (``pooled_sample_stderr`` with
  ``weight_by_size``, else ``unweighted_mean_stderr``), sizes being lm-eval's sample counts;
- an objective's SE: ``sqrt(Σ_t (w_t / Σ w)² SE_t²)``, its terms taken as independent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evaluators.base import Scores
from evaluators.stats import NAN, REDUCTIONS, Reduction, objective_stderr, reduce_samples
from search.errors import UserError


@dataclass(frozen=True)
class ObjectiveTerm:
    """One (task or group, metric, weight) of an objective, the metric resolved to a results key."""

    score_key: str  # "task/metric", the key in Scores.tasks
    task: str  # the leaf task or group, as lm-eval reports it
    results_key: str  # "metric,filter" as lm-eval reports it
    weight: float
    leaves: tuple[str, ...] = ()  # a group's leaf tasks in concatenation order; () for a task
    weight_by_size: bool = True  # a group's lm-eval weighting of this metric

    @property
    def is_group(self) -> bool:
        return self.leaves != () and self.leaves != (self.task,)


def weighted_mean(terms: Sequence[tuple[float, float]]) -> float:
    """Weighted mean of ``(value, weight)`` pairs: the reduction of an objective."""
    total = sum(w for _, w in terms)
    return sum(v * w for v, w in terms) / total


def reduction_of(task: Any, metric: str) -> Reduction | None:
    """The :class:`~evaluators.stats.Reduction` of the task's aggregation of ``metric``."""
    from lm_eval.api.registry import get_aggregation

    aggregation = task.aggregation().get(metric)
    for name, reduction in REDUCTIONS.items():
        if aggregation is not None and get_aggregation(name) is aggregation:
            return reduction
    return None


def reduce_results(
    out: Mapping[str, Any], terms: Mapping[str, Sequence[ObjectiveTerm]], tasks: Mapping[str, Any]
) -> Scores:
    """Scores of one ``lm_eval.evaluator.evaluate`` output (``log_samples=True``).

    Args:
        out: lm-eval's output.
        terms: objective name -> its terms.
        tasks: leaf task name -> :class:`~evaluators.lm_tasks.LoadedTask`.

    Raises:
        UserError: a task or group reported no value for its metric, or a NaN.
    """
    results, samples = out["results"], out.get("samples") or {}
    scores = Scores()  # filled in below
    leaf_stats: dict[tuple[str, str], tuple[tuple[float, ...], float]] = {}

    def leaf(task: str, key: str) -> tuple[tuple[float, ...], float]:
        if (task, key) not in leaf_stats:
            metric, _, filter_name = key.partition(",")
            rows = sorted(
                (
                    s
                    for s in samples.get(task, ())
                    if s.get("filter") == filter_name and metric in s
                ),
                key=lambda s: s["doc_id"],
            )
            values = [s[metric] for s in rows]
            leaf_stats[task, key] = reduce_samples(values, reduction_of(tasks[task].task, metric))
        return leaf_stats[task, key]

    for name, object_terms in terms.items():
        for term in object_terms:
            if term.score_key in scores.tasks:
                continue
            scores.tasks[term.score_key] = _value(results, term.task, term.results_key)
            if not term.is_group:
                values, se = leaf(term.task, term.results_key)
                scores.examples[term.score_key], scores.task_stderr[term.score_key] = values, se
                continue
            label = term.score_key.split("/", 1)[1]
            parts: list[float] = []
            ses, sizes = [], []
            for task in term.leaves:
                if term.results_key not in results.get(task, {}):
                    continue  # lm-eval leaves a task without the metric out of the group too
                values, se = leaf(task, term.results_key)
                key = f"{task}/{label}"
                scores.tasks[key] = _value(results, task, term.results_key)
                scores.examples[key], scores.task_stderr[key] = values, se
                parts.extend(values)
                ses.append(se)
                sizes.append(int(results[task].get("sample_len", len(values))))
            scores.examples[term.score_key] = tuple(parts)
            scores.task_stderr[term.score_key] = group_stderr(ses, sizes, term.weight_by_size)
        scores.objectives[name] = weighted_mean(
            [(scores.tasks[t.score_key], t.weight) for t in object_terms]
        )
        scores.stderr[name] = objective_stderr(
            [(t.weight, scores.task_stderr[t.score_key]) for t in object_terms]
        )
    return scores


def combine_examples(
    examples: Mapping[str, Sequence[float]], terms: Mapping[str, Sequence[ObjectiveTerm]]
) -> Scores:
    """What :func:`reduce_results` returns, from per-example values alone (mean metrics only).

    For scores of example subsets: a trial scored in parts has, once every part is in, each key's
    values over all its examples; for metrics lm-eval aggregates with ``mean`` the score is their
    mean and the SE :func:`~evaluators.stats.mean_stderr`, a group's as lm-eval aggregates it (size-
    weighted, or the plain mean of its tasks' scores) with :func:`group_stderr`.
    """
    from evaluators.stats import mean_stderr

    scores = Scores()
    for name, object_terms in terms.items():
        for term in object_terms:
            key = term.score_key
            if key in scores.tasks:
                continue
            if not term.is_group:
                values = tuple(examples[key])
                scores.tasks[key] = sum(values) / len(values)
                scores.examples[key], scores.task_stderr[key] = values, mean_stderr(values)
                continue
            label = key.split("/", 1)[1]
            parts, means, ses, sizes = [], [], [], []
            for task in term.leaves:
                leaf_key = f"{task}/{label}"
                if leaf_key not in examples:
                    continue
                values = tuple(examples[leaf_key])
                scores.tasks[leaf_key] = sum(values) / len(values)
                scores.examples[leaf_key] = values
                scores.task_stderr[leaf_key] = mean_stderr(values)
                parts.extend(values)
                means.append(scores.tasks[leaf_key])
                ses.append(scores.task_stderr[leaf_key])
                sizes.append(len(values))
            scores.tasks[key] = (
                sum(parts) / len(parts) if term.weight_by_size else sum(means) / len(means)
            )
            scores.examples[key] = tuple(parts)
            scores.task_stderr[key] = group_stderr(ses, sizes, term.weight_by_size)
        scores.objectives[name] = weighted_mean(
            [(scores.tasks[t.score_key], t.weight) for t in object_terms]
        )
        scores.stderr[name] = objective_stderr(
            [(t.weight, scores.task_stderr[t.score_key]) for t in object_terms]
        )
    return scores


def group_stderr(stderrs: Sequence[float], sizes: Sequence[int], weight_by_size: bool) -> float:
    """A group's SE from its tasks' SEs, with the formula lm-eval uses for the group's score."""
    from lm_eval.api.metrics import pooled_sample_stderr, unweighted_mean_stderr

    if not stderrs or any(math.isnan(s) for s in stderrs):
        return NAN
    if not weight_by_size:
        return float(unweighted_mean_stderr(list(stderrs)))
    if sum(sizes) <= len(sizes):
        return NAN
    return float(pooled_sample_stderr(list(stderrs), list(sizes)))


def _value(results: Mapping[str, Mapping[str, Any]], task: str, key: str) -> float:
    metrics = results.get(task, {})
    if key not in metrics:
        have = sorted(
            k for k in metrics if "_stderr" not in k and k not in ("alias", "name", "sample_len")
        )
        raise UserError(
            f"task {task!r} reported no {key!r}; it reported: {', '.join(have) or 'nothing'}"
        )
    value = float(metrics[key])
    if math.isnan(value):
        raise UserError(f"task {task!r}: metric {key!r} is NaN (no scorable examples?)")
    return value
