"""``build_evaluator``: one evaluator computing every objective, whichever evaluator owns it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from evaluators.base import Evaluator, Scores
from evaluators.spec import EvalSpec, ObjectiveSpec
from search.errors import UserError

EvaluatorFactory = Callable[[Sequence[ObjectiveSpec], EvalSpec, Any, Any], Evaluator]


def _lm_eval(
    objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
) -> Evaluator:
    from evaluators.lm_eval_evaluator import LmEvalEvaluator  # lazy: imports lm_eval

    return LmEvalEvaluator(objectives, spec, model, tokenizer)


def _perplexity(
    objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
) -> Evaluator:
    from evaluators.perplexity import PerplexityEvaluator

    return PerplexityEvaluator(objectives, spec, model, tokenizer)


# ObjectiveSpec.evaluator -> factory building one evaluator for all objectives of that kind.
EVALUATORS: dict[str, EvaluatorFactory] = {
    "lm_eval": _lm_eval,
    "perplexity": _perplexity,
}


class CompositeEvaluator(Evaluator):
    """Runs several evaluators in order and merges their scores."""

    def __init__(self, parts: Sequence[Evaluator]) -> None:
        self.parts = tuple(parts)

    def examples_per_task(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for part in self.parts:
            counts.update(part.examples_per_task())
        return counts

    def evaluate(self, model: Any, tokenizer: Any) -> Scores:
        tasks: dict[str, float] = {}
        objectives: dict[str, float] = {}
        for part in self.parts:
            scores = part.evaluate(model, tokenizer)
            tasks.update(scores.tasks)
            objectives.update(scores.objectives)
        return Scores(tasks=tasks, objectives=objectives)


def build_evaluator(
    objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
) -> Evaluator:
    """One evaluator for all objectives, built once for the resident model.

    Objectives are grouped by their ``evaluator`` field; each group gets one evaluator from
    :data:`EVALUATORS` (so all lm-eval tasks share one harness pass per call).

    Raises:
        UserError: no objectives, duplicate objective names, or any evaluator's own check.
    """
    if not objectives:
        raise UserError("objectives: expected at least one objective")
    names = [o.name for o in objectives]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"objectives: duplicate objective names {', '.join(dupes)}")
    kinds: dict[str, list[ObjectiveSpec]] = {}
    for obj in objectives:
        kinds.setdefault(obj.evaluator, []).append(obj)
    parts = [EVALUATORS[kind](group, spec, model, tokenizer) for kind, group in kinds.items()]
    return parts[0] if len(parts) == 1 else CompositeEvaluator(parts)
