"""merge-search: Optuna-driven merge-weight search over checkpoint pools."""

from __future__ import annotations

from search import _offline as _offline  # noqa: F401  (sets HF offline variables first)
from search.errors import UserError

__all__ = ["UserError"]
