"""merge-search: Optuna-driven merge-weight search over checkpoint pools.

The map (see README "Architecture"); arrows point from a package to what it may import:

- ``search.errors``, ``search._offline`` — the foundation: the one user-facing error type, and
  the Hugging Face offline variables; they import nothing of the project, everything may
  import them;
- ``search.engine`` — merge plans, the method registry, the pool, materialize (torch,
  safetensors);
- ``evaluators`` (top-level) — how a merged model is scored (lm-eval, perplexity);
- ``search.calibration`` (the calibration examples data-informed merges learn from) →
  evaluators;
- ``search.export`` → engine;
- ``search.study`` → engine, evaluators, the strategies' registry;
- ``search.strategies`` — one folder per strategy (staged scoring, Frank-Wolfe, Fisher ...):
  each → study, engine, calibration, evaluators; nothing outside a folder imports or names it
  but the registry ``search.strategies`` (``__init__``), which the loop, the report and the
  commands read;
- ``search.report`` → study, export, engine, evaluators, the registry;
- ``search.zoo`` (the demo pool) → evaluators;
- ``search.commands`` → anything; only it parses arguments; ``search.cli`` wires it.

``tests/test_architecture.py`` checks these rules on the source.
"""

from __future__ import annotations

from search import _offline as _offline  # noqa: F401  (sets HF offline variables first)
from search.errors import UserError

__all__ = ["UserError"]
