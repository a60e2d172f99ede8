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
    """How an evaluator's scores are built from per-example values (for staged scoring).

    Attributes:
        terms: objective name -> its ``(score key, weight)`` terms (the objective is their
            weighted mean).
        leaves: score key -> the leaf tasks (names as in ``examples_per_task``) whose
            per-example values the key's values concatenate, in that order; each leaf's values
            in ascending document order.
    """

    terms: dict[str, tuple[tuple[str, float], ...]]
    leaves: dict[str, tuple[str, ...]]


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

    def layout(self) -> Layout:
        """Which leaf tasks each score key's per-example values come from (staged scoring).

        Raises:
            UserError: this evaluator's scores are not functions of per-example means (say why).
        """
        from search.errors import UserError

        raise UserError(f"{type(self).__name__} does not support staged scoring (eval.racing)")

    def combine(self, examples: Mapping[str, Sequence[float]]) -> Scores:
        """Scores from per-example values alone: with every example of every score key
        (ascending document order, groups concatenated as in :meth:`layout`), those of one
        call without ``docs``, which is what a call scored in parts adds up to; with only the
        examples scored so far, the same reduction over those.
        """
        raise NotImplementedError(type(self).__name__)
