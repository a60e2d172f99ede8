"""merge-search: Optuna-driven merge-weight search over checkpoint pools.

The map (see README "Architecture"); arrows point from a package to what it may import:

- ``search.errors``, ``search._offline`` — the foundation: the one user-facing error type, and
  the Hugging Face offline variables; they import nothing of the project, everything may
  import them;
- ``search.engine`` — merge plans, the method registry, the pool, materialize (torch,
  safetensors);
- ``evaluators`` (top-level) — how a merged model is scored (lm-eval, perplexity);
- ``search.export`` → engine;
- ``search.fisher`` (each checkpoint's Fisher, cached on disk) → engine, evaluators;
- ``search.study`` → fisher, engine, evaluators; its strategies (``staged``, ``frank_wolfe``,
  ``fisher``) are imported only through ``search.study.features``;
- ``search.report`` → study, fisher, export, engine, evaluators;
- ``search.zoo`` (the demo pool) → evaluators;
- ``search.commands`` → anything; only it parses arguments; ``search.cli`` wires it.

``tests/test_architecture.py`` checks these rules on the source.
"""

from __future__ import annotations

from search import _offline as _offline  # noqa: F401  (sets HF offline variables first)
from search.errors import UserError

__all__ = ["UserError"]
