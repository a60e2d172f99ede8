"""How a merged model is scored: one small interface, lm-eval and perplexity behind it.

Dependencies: lm-eval, transformers, torch; within merge-search only the foundation
(:mod:`search.errors`, :mod:`search._offline`). The study imports evaluators, never the reverse.
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

# the HF offline variables: already set by the import of ``search`` that evaluators.builder
# makes (through search.errors) before anything imports a Hugging Face library; named here
# so that evaluators never depends on that order
from search import _offline as _offline  # noqa: F401

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
