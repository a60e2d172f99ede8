"""merge-search: Optuna-driven merge-weight search over checkpoint pools.

The map (see README "Architecture"); arrows point from a package to what it may import:

- ``search.errors`` — the foundation: the one user-facing error type; it imports nothing of
  the project, everything may import it;
- ``search.engine`` — merge plans, the method registry, the pool, materialize (torch,
  safetensors);
- ``evaluators`` (top-level) — how a merged model is scored (lm-eval, perplexity);
- ``search.calibration`` (the calibration examples data-informed merges learn from) →
  evaluators;
- ``search.export`` → engine;
- ``search.study`` → engine, evaluators, export (a trial's note is the mergekit YAML an export
  writes), the strategies' registry;
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

from search.errors import UserError

__all__ = ["UserError"]
