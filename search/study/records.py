"""Compact per-example results in a trial's user attrs, and standard errors as JSON values.

A trial keeps its per-example values (``Scores.examples``) in the user attr ``examples``:
``{"task/metric": encoded}``. Optuna stores user attrs as JSON text (one row per attr), so
the values are packed:

- 0/1 values (``acc``, ``exact_match``): a bit string, ``{"bits": "<base64>", "n": N}``, bit
  ``i`` of the string is example ``i`` (numpy ``packbits``, little bit order): 2,000 examples
  take 340 characters;
- anything else: little-endian float32, ``{"f32": "<base64>", "n": N}`` (2,000 examples: about
  10,700 characters; values come back rounded to float32).

A study of 10,000 trials x 2,000 examples of two 0/1 tasks stores about 7 MB of them.
Standard errors (user attr ``stderr``, ``{objective: SE}``) are plain floats, ``None`` where
not available (NaN is not JSON).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EXAMPLES_ATTR = "examples"
STDERR_ATTR = "stderr"
TASK_STDERR_ATTR = "task_stderr"
# staged scoring (search.study.racing): rungs reached / the study's rungs, the racing
# constraint's value, and the trial that stopped this one (only on stopped trials)
RUNG_ATTR = "rung"
RUNGS_ATTR = "rungs"
VIOLATION_ATTR = "racing_violation"
STOPPED_ATTR = "stopped_by"


def encode_values(values: Sequence[float]) -> dict[str, Any]:
    """One task's per-example values as a small JSON-able dict (see the module docstring)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size and np.isin(array, (0.0, 1.0)).all():
        packed = np.packbits(array.astype(np.uint8), bitorder="little")
        return {"bits": base64.b64encode(packed.tobytes()).decode("ascii"), "n": int(array.size)}
    data = array.astype("<f4").tobytes()
    return {"f32": base64.b64encode(data).decode("ascii"), "n": int(array.size)}


def decode_values(encoded: Mapping[str, Any]) -> tuple[float, ...]:
    """The values :func:`encode_values` packed (float32-rounded for ``f32``)."""
    n = int(encoded["n"])
    if "bits" in encoded:
        packed = np.frombuffer(base64.b64decode(encoded["bits"]), dtype=np.uint8)
        return tuple(float(b) for b in np.unpackbits(packed, count=n, bitorder="little"))
    values = np.frombuffer(base64.b64decode(encoded["f32"]), dtype="<f4")
    if values.size != n:
        raise ValueError(f"encoded values: expected {n} float32 values, found {values.size}")
    return tuple(float(v) for v in values)


def encode_examples(examples: Mapping[str, Sequence[float]]) -> dict[str, dict[str, Any]]:
    """``{"task/metric": values}`` -> ``{"task/metric": encoded}``."""
    return {key: encode_values(values) for key, values in examples.items()}


def decode_examples(encoded: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, ...]]:
    """The inverse of :func:`encode_examples`."""
    return {key: decode_values(values) for key, values in encoded.items()}


def json_stderr(stderr: Mapping[str, float]) -> dict[str, float | None]:
    """Standard errors as JSON values: NaN (not available) becomes ``None``."""
    return {k: (None if v is None or math.isnan(v) else float(v)) for k, v in stderr.items()}
