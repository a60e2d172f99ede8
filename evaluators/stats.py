"""Per-example values and standard errors: from lm-eval's per-sample metric values to a score's SE.

lm-eval gives one value per document and metric (``log_samples``) and an aggregation that turns
the list into the task's score. Here each aggregation lm-eval ships for per-document metrics
has a :class:`Reduction`:

- the **per-example value** is the aggregation applied to that document alone: for ``mean``
  metrics (``acc``, ``exact_match``, ...) the per-sample value itself, so the values average to
  the task's score; for ``perplexity`` (per-sample log-likelihood ``ll``) ``exp(-ll)``; for
  ``weighted_perplexity`` and ``bits_per_byte`` (per-sample ``(ll, words or bytes)``) that
  document's perplexity / bits per byte;
- the **standard error** of the task's score: the sample standard deviation over ``sqrt(n)``
  for means (lm-eval's ``mean_stderr``); the delta method for ``perplexity = exp(-mean ll)``;
  the ratio estimator with the delta method for the corpus ratios (``Σ ll / Σ weight``).

lm-eval computes standard errors only for means in closed form (it bootstraps the rest in a
process pool, or reports none for ``weighted_perplexity``), hence these few formulas. Other
aggregations (corpus-level ``f1``, ``bleu``, ``matthews_corrcoef``, ``median``, custom
functions) keep numeric per-sample values as they are and have no standard error (NaN).

Two merges scored on the same examples are compared *paired* (:func:`paired_difference`): the
standard error of a difference of means from the per-example differences, far smaller than
the two scores' own errors when the merges agree on most examples. The study's strategies that
compare trials on subsets of examples and the report's comparisons with the inputs both use it.

Pure functions of plain numbers: no torch, no lm-eval import.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NAN = float("nan")


def mean_stderr(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1) over ``sqrt(n)``, as lm-eval's; NaN below 2 values."""
    n = len(values)
    if n < 2:
        return NAN
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1) / n)


def ratio_stderr(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Standard error of ``R = Σ num / Σ den`` over examples (ratio estimator, linearized).

    ``Var(R) ≈ Σ (num_i - R den_i)² / (n (n - 1) mean(den)²)``; with equal denominators it is
    :func:`mean_stderr` of ``num_i / den_i``. NaN below 2 examples or with ``Σ den = 0``.
    """
    n = len(numerators)
    total = sum(denominators)
    if n < 2 or total == 0:
        return NAN
    r = sum(numerators) / total
    mean_den = total / n
    spread = sum((a - r * b) ** 2 for a, b in zip(numerators, denominators, strict=True))
    return math.sqrt(spread / (n * (n - 1))) / abs(mean_den)


def objective_stderr(terms: Sequence[tuple[float, float]]) -> float:
    """SE of a weighted mean of independent scores: ``sqrt(Σ (w_t / Σ w)² SE_t²)``.

    Args:
        terms: ``(weight, standard error)`` per task of the objective.
    """
    total = sum(w for w, _ in terms)
    return math.sqrt(sum((w / total) ** 2 * se**2 for w, se in terms))


def _perplexity_stderr(items: Sequence[float]) -> float:
    # exp(-mean ll): delta method, d exp(-m) / dm = -exp(-m)
    return math.exp(-sum(items) / len(items)) * mean_stderr(items) if items else NAN


def _weighted_perplexity_stderr(items: Sequence[Any]) -> float:
    # exp(-Σ ll / Σ w): delta method on the ratio
    lls, weights = [float(a) for a, _ in items], [float(b) for _, b in items]
    if not items or sum(weights) == 0:
        return NAN
    return math.exp(-sum(lls) / sum(weights)) * ratio_stderr(lls, weights)


def _bits_per_byte_stderr(items: Sequence[Any]) -> float:
    # -Σ ll / Σ bytes / ln 2: linear in the ratio
    return ratio_stderr([a for a, _ in items], [b for _, b in items]) / math.log(2)


def _ratio_value(transform: Callable[[float], float]) -> Callable[[Any], float]:
    def value(item: Any) -> float:
        ll, weight = item
        return transform(float(ll) / float(weight)) if weight else NAN

    return value


@dataclass(frozen=True)
class Reduction:
    """How one lm-eval aggregation's per-sample values become per-example values and an SE."""

    per_example: Callable[[Any], float]  # one per-sample value -> that example's score
    stderr: Callable[[Sequence[Any]], float]  # all per-sample values -> SE of the task's score


def _nan_stderr(values: Sequence[Any]) -> float:
    return mean_stderr([v for v in values if not math.isnan(v)])


# lm-eval's registered aggregation name -> its reduction.
REDUCTIONS: dict[str, Reduction] = {
    "mean": Reduction(float, mean_stderr),
    "nanmean": Reduction(float, _nan_stderr),
    "perplexity": Reduction(lambda ll: math.exp(-float(ll)), _perplexity_stderr),
    "weighted_perplexity": Reduction(
        _ratio_value(lambda r: math.exp(-r)), _weighted_perplexity_stderr
    ),
    "bits_per_byte": Reduction(_ratio_value(lambda r: -r / math.log(2)), _bits_per_byte_stderr),
}


def reduce_samples(
    values: Sequence[Any], reduction: Reduction | None
) -> tuple[tuple[float, ...], float]:
    """``(per-example values, standard error)`` of one metric's per-sample values.

    Without a reduction (an aggregation not in :data:`REDUCTIONS`), numeric values are kept as
    they are and the standard error is NaN; non-numeric ones (pairs for corpus metrics) give no
    per-example values.
    """
    if reduction is not None:
        return tuple(reduction.per_example(v) for v in values), float(reduction.stderr(values))
    if all(isinstance(v, numbers.Real) for v in values):
        return tuple(float(v) for v in values), NAN
    return (), NAN


# ------------------------------------------------------------------ paired comparisons


@dataclass(frozen=True)
class Term:
    """One task of an objective: where its per-example values are, and its weight."""

    key: str  # the "task/metric" key of the per-example values
    weight: float


@dataclass(frozen=True)
class Objective:
    """An objective as a paired comparison sees it: weighted tasks and the direction."""

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
