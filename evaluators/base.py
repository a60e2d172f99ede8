"""The evaluator interface: score a resident model and tokenizer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scores:
    """What one evaluation measured.

    Attributes:
        tasks: ``"task/metric" -> value`` (groups and their subtasks each have a key).
        objectives: objective name -> value.
        examples: per ``tasks`` key, the per-example values in ascending document order
            (lm-eval's per-sample metric values; see :mod:`evaluators.stats`). A group's values
            are its leaf tasks' values concatenated in the group's task order. Empty for a
            metric lm-eval can only compute over the whole corpus (f1, bleu, ...).
        stderr: objective name -> standard error of its value (NaN where not available).
        task_stderr: per ``tasks`` key, the standard error of that score.
    """

    tasks: dict[str, float] = field(default_factory=dict)
    objectives: dict[str, float] = field(default_factory=dict)
    examples: dict[str, tuple[float, ...]] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    task_stderr: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """How an evaluator's scores are built from per-example values (:meth:`Evaluator.
    example_layout`): what lets scores of a subset of examples be combined and compared.

    Attributes:
        terms: objective name -> its ``(score key, weight)`` terms (the objective is their
            weighted mean).
        leaves: score key -> the leaf tasks (names as in ``examples_per_task``) whose
            per-example values the key's values concatenate, in that order; each leaf's values
            in ascending document order.
    """

    terms: dict[str, tuple[tuple[str, float], ...]]
    leaves: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class SubsetScores:
    """What :meth:`Evaluator.score_subset` measured on a chosen subset of examples.

    Attributes:
        scores: the scores over the subset; ``scores.examples[key]``: the per-example values.
        positions: per score key, where each of those values sits among a full call's values
            (the same example's index in ``Scores.examples[key]`` of a call without ``docs``).
    """

    scores: Scores
    positions: dict[str, tuple[int, ...]]


def subset_positions(
    leaves: Mapping[str, Sequence[str]],
    counts: Mapping[str, int],
    docs: Mapping[str, Sequence[int]],
) -> dict[str, tuple[int, ...]]:
    """Per score key (``leaves``: its leaf tasks, :attr:`Layout.leaves`), the positions in a full
    call's values of the documents ``docs`` (per leaf task, ascending) scores; ``counts``: a
    full call's documents per leaf task (:meth:`Evaluator.examples_per_task`)."""
    out = {}
    for key, members in leaves.items():
        offset, where = 0, []
        for leaf in members:
            where.extend(offset + int(d) for d in docs[leaf])
            offset += counts[leaf]
        out[key] = tuple(where)
    return out


class Evaluator(ABC):
    """Scores a model that stays resident while its weights change in place between calls.

    Rules an implementation keeps:
    - everything expensive (task building, harness wrappers) is built once, in ``__init__`` or on
      the first call, and reused; nothing is cached between calls that depends on the weights;
    - ``evaluate`` returns a finite value for every objective it owns, or raises ``UserError``
      naming the task and what exists (unknown task, missing metric, NaN score);
    - it returns per-example values for every score key and a standard error per objective;
    - ``docs`` restricts a call to some documents of some tasks; the values then cover those
      documents only (``examples`` in ascending document order);
    - results are deterministic for fixed weights (fixed seeds, greedy generation).
    """

    @abstractmethod
    def evaluate(
        self, model: Any, tokenizer: Any, docs: Mapping[str, Sequence[int]] | None = None
    ) -> Scores:
        """Score the model as its weights are now.

        Args:
            model: the resident model.
            tokenizer: its tokenizer.
            docs: leaf task name -> indices of the documents to score (lm-eval's ``samples``);
                tasks not named, or ``None``: every example (as limited by ``limit``).

        Raises:
            ValueError: ``docs`` names a task this evaluator does not score, or an index
                outside the task's documents.
        """

    @abstractmethod
    def examples_per_task(self) -> dict[str, int]:
        """Leaf task name -> how many examples one call without ``docs`` scores."""

    def example_layout(self) -> Layout:
        """Which leaf tasks each score key's per-example values come from, and each objective's
        terms: what combining and comparing scores of example subsets needs.

        Raises:
            UserError: this evaluator's scores are not functions of per-example means (say why).
        """
        from search.errors import UserError

        raise UserError(
            f"{type(self).__name__}: its scores are not means of per-example values, so scores "
            "of example subsets cannot be combined"
        )

    def score_subset(
        self, model: Any, tokenizer: Any, docs: Mapping[str, Sequence[int]]
    ) -> SubsetScores:
        """Score the chosen examples only: ``docs``, leaf task -> document indices (ascending),
        one entry for every leaf task; per-example values and where each sits in a full call's
        values (needs :meth:`example_layout`)."""
        leaves = self.example_layout().leaves
        scores = self.evaluate(model, tokenizer, docs)
        return SubsetScores(scores, subset_positions(leaves, self.examples_per_task(), docs))

    def combine(self, examples: Mapping[str, Sequence[float]]) -> Scores:
        """Scores from per-example values alone: with every example of every score key
        (ascending document order, groups concatenated as in :meth:`example_layout`), those of one
        call without ``docs``, which is what a call scored in parts adds up to; with only the
        examples scored so far, the same reduction over those.
        """
        raise NotImplementedError(type(self).__name__)
