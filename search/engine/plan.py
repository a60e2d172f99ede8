"""One frozen, hashable value that describes a merge."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ParamValue = float | int | bool


@dataclass(frozen=True)
class MergePlan:
    """What to merge and how: a method name, a weight per checkpoint and layer group, params.

    ``weights[i][g]`` is the raw (un-normalized) weight of checkpoint ``i`` in layer group ``g``;
    with one layer group every inner tuple has length 1. ``params`` holds the method's own
    parameters as sorted ``(name, value)`` pairs. ``seed`` feeds stochastic methods (DARE) so a
    plan always materializes to the same tensors. ``key`` is the plan's hash: the cache key and
    the value recorded on each trial, so identical merges are never scored twice.

    Build plans with :meth:`create`, which canonicalizes the inputs.
    """

    method: str
    weights: tuple[tuple[float, ...], ...]
    params: tuple[tuple[str, ParamValue], ...] = ()
    seed: int = 0
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        groups = {len(w) for w in self.weights}
        if not self.weights or len(groups) != 1 or 0 in groups:
            raise ValueError(
                "MergePlan.weights: expected one non-empty tuple per checkpoint, all of one length"
            )
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "key", hashlib.sha256(payload.encode()).hexdigest()[:16])

    @classmethod
    def create(
        cls,
        method: str,
        weights: Sequence[float] | Sequence[Sequence[float]],
        params: Mapping[str, ParamValue] | None = None,
        seed: int = 0,
    ) -> MergePlan:
        """Canonical plan: floats as Python floats, one tuple per checkpoint, params sorted."""
        rows = tuple(
            tuple(float(x) for x in w) if isinstance(w, Sequence) else (float(w),) for w in weights
        )
        items = tuple(sorted((str(k), _canonical(v)) for k, v in (params or {}).items()))
        return cls(method=method, weights=rows, params=items, seed=int(seed))

    @property
    def n_checkpoints(self) -> int:
        return len(self.weights)

    @property
    def n_groups(self) -> int:
        return len(self.weights[0])

    def param(self, name: str, default: ParamValue | None = None) -> ParamValue | None:
        return dict(self.params).get(name, default)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "weights": [list(w) for w in self.weights],
            "params": dict(self.params),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> MergePlan:
        return cls.create(data["method"], data["weights"], data.get("params"), data.get("seed", 0))


def _canonical(value: ParamValue) -> ParamValue:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    return float(value)
