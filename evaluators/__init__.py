"""How a merged model is scored: one small interface, lm-eval and perplexity behind it.

Dependencies: lm-eval, transformers, torch; within merge-search only the foundation
(:mod:`search.errors`). The study imports evaluators, never the reverse.
"""

from __future__ import annotations

from evaluators.base import Evaluator, Scores
from evaluators.builder import (
    CHECKS,
    EVALUATORS,
    CompositeEvaluator,
    build_evaluator,
    check_objectives,
)
from evaluators.spec import EvalSpec, ObjectiveSpec, TaskRef

__all__ = [
    "CHECKS",
    "EVALUATORS",
    "CompositeEvaluator",
    "EvalSpec",
    "Evaluator",
    "ObjectiveSpec",
    "Scores",
    "TaskRef",
    "build_evaluator",
    "check_objectives",
]
