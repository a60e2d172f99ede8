"""How a merged model is scored: one small interface, lm-eval and perplexity behind it."""

from __future__ import annotations

from search import _offline as _offline  # noqa: F401  (sets HF offline variables first)
