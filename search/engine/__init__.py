"""The merge engine: a checkpoint pool, merge plans and methods, merging into a resident model.

- :mod:`~search.engine.plan` — :class:`MergePlan`, the frozen, hashable value of one merge;
- :mod:`~search.engine.registry` — the merge methods declared as data (no torch import);
- :mod:`~search.engine.methods` — their pure tensor functions;
- :mod:`~search.engine.kernels` — the fused weighted sum of linear merges;
- :mod:`~search.engine.files` — safetensors headers checked against the files, reads through
  their memory maps;
- :mod:`~search.engine.placement` — where a pool's tensors live (``device``, ``host``,
  ``disk``: :class:`~search.engine.placement.TensorStore`) and the ``auto`` rule;
- :mod:`~search.engine.checkpoint` — one checkpoint folder opened and checked;
- :mod:`~search.engine.pool` — :class:`CheckpointPool`: folders checked, tensors placed;
- :mod:`~search.engine.identity` — the pool's files: stamps, digests, fingerprints, checks;
- :mod:`~search.engine.layers` — which block a tensor belongs to, and its layer group;
- :mod:`~search.engine.model` — the resident model and its tokenizer;
- :mod:`~search.engine.extras` — per-tensor extras some methods read beside the weights (one
  generic slot; the strategies that compute them own their meaning);
- :mod:`~search.engine.dtypes` — dtype names, and the dtype a computation accumulates in;
- :mod:`~search.engine.materialize` — a plan written into the resident model in place;
- :mod:`~search.engine.likelihood` — the log-likelihood of token batches (model + batches in,
  tensors out);
- :mod:`~search.engine.device` — ``device: auto``, one GPU per worker, CPU threads.

Dependencies: torch and safetensors (transformers only to build the resident model); within
merge-search only :mod:`search.errors`. Importing this package pulls in neither Optuna nor
lm-eval; importing it or its registry pulls in no torch either (the names below that need torch
are imported on first access).
"""

from __future__ import annotations

import importlib
from typing import Any

from search.engine.plan import MergePlan
from search.engine.registry import METHODS, MergeMethod, ParamSpec, get_method

_LAZY = {
    "CheckpointPool": "search.engine.pool",
    "materialize": "search.engine.materialize",
    "merged_tensors": "search.engine.materialize",
    "effective_weights": "search.engine.materialize",
}

__all__ = ["METHODS", "MergeMethod", "MergePlan", "ParamSpec", "get_method", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search.engine' has no attribute {name!r}")
