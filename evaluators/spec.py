"""Validated descriptions of what to score: objectives made of tasks, and evaluation settings.

These pydantic models are the evaluators' input; the study config embeds them as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskRef(_Strict):
    """One lm-eval task inside an objective."""

    task: str = Field(min_length=1)
    metric: str | None = None  # None: the task's first metric
    weight: float = Field(default=1.0, gt=0)
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=1)  # None: EvalSpec.limit


class ObjectiveSpec(_Strict):
    """A named number to optimize: the weighted mean of its tasks' scores.

    ``evaluator`` picks who computes it: ``lm_eval`` (``tasks``) or ``perplexity`` (``data``, a
    local .txt or .jsonl file with a ``text`` field; lower is better).
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    direction: Literal["maximize", "minimize"] = "maximize"
    evaluator: Literal["lm_eval", "perplexity"] = "lm_eval"
    tasks: tuple[TaskRef, ...] = ()
    data: Path | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> ObjectiveSpec:
        if self.evaluator == "lm_eval" and not self.tasks:
            raise ValueError(
                f"objective {self.name!r}: lm_eval objectives need a non-empty 'tasks' list"
            )
        if self.evaluator == "perplexity" and self.data is None:
            raise ValueError(
                f"objective {self.name!r}: perplexity objectives need 'data' "
                "(a .txt or .jsonl file)"
            )
        return self


class EvalSpec(_Strict):
    """How tasks are run. Defaults follow lm-eval's; fixed seeds keep trials comparable."""

    tasks_path: Path | None = None  # folder of task YAMLs (TaskManager include_path)
    limit: int | None = Field(default=None, ge=1)  # examples per task; None: all
    batch_size: int = Field(default=32, ge=1)
    num_fewshot: int | None = Field(default=None, ge=0)
    seed: int = 0
    # search task -> held-out task, used to re-score the Pareto front on data the search never saw
    heldout: dict[str, str] = Field(default_factory=dict)
