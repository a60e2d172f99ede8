"""The evaluator interface: score a resident model and tokenizer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scores:
    """Per-task scores (``"task/metric" -> value``) and objective values (``name -> value``)."""

    tasks: dict[str, float] = field(default_factory=dict)
    objectives: dict[str, float] = field(default_factory=dict)


class Evaluator(ABC):
    """Scores a model that stays resident while its weights change in place between calls.

    Rules an implementation keeps:
    - everything expensive (task building, harness wrappers) is built once, in ``__init__`` or on
      the first call, and reused; nothing is cached between calls that depends on the weights;
    - ``evaluate`` returns a finite value for every objective it owns, or raises ``UserError``
      naming the task and what exists (unknown task, missing metric, NaN score);
    - results are deterministic for fixed weights (fixed seeds, greedy generation).
    """

    @abstractmethod
    def evaluate(self, model: Any, tokenizer: Any) -> Scores:
        """Score the model as its weights are now."""

    def examples_per_task(self) -> dict[str, int]:
        """How many examples of each task (or data file) one ``evaluate`` call scores.

        A study's example budget and its full-evaluation equivalents are counted with these.
        """
        raise NotImplementedError(f"{type(self).__name__} does not count its examples")
