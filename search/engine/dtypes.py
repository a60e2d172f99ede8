"""Dtypes of the engine: storage names, and the dtype a computation accumulates in."""

from __future__ import annotations

import torch

from search.errors import UserError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch floating dtype from a name; ``UserError`` listing the names otherwise."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise UserError(f"dtype: expected a floating dtype, got {dtype}")
    key = str(dtype).removeprefix("torch.")
    if key not in DTYPES:
        raise UserError(
            f"dtype: expected one of float32, bfloat16, float16, float64, got {dtype!r}"
        )
    return DTYPES[key]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a computation on ``dtype`` tensors accumulates in: float64 for float64, else
    float32 (half-precision storage is up-cast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
