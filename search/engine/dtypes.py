"""Dtypes of the engine: storage names, and the dtype a computation accumulates in."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from search.engine.files import TensorInfo
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
# the dtype an export writes for each safetensors storage dtype: 8-bit floats widen to bfloat16
# (an export is not written in 8 bits)
WRITTEN_AS = {
    "F64": "float64",
    "F32": "float32",
    "BF16": "bfloat16",
    "F16": "float16",
    "F8_E4M3": "bfloat16",
    "F8_E5M2": "bfloat16",
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


def stored_dtype(tables: Sequence[Mapping[str, TensorInfo]]) -> str:
    """The dtype the inputs are stored in, as an export writes it (:data:`WRITTEN_AS`): the one
    holding most of their elements, so a bfloat16 model that keeps its norms in float32 is
    bfloat16; a tie goes to the wider dtype."""
    counts: dict[str, int] = {}
    for table in tables:
        for info in table.values():
            name = WRITTEN_AS[info.dtype]
            counts[name] = counts.get(name, 0) + math.prod(info.shape)
    width = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}
    return max(counts, key=lambda name: (counts[name], width[name]))
