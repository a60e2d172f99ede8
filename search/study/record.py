"""What a trial recorded: one typed :class:`TrialRecord`, written and read in one place.

Optuna keeps a trial's own data as JSON user attrs. Every attr merge-search writes on a trial is
a field of :class:`TrialRecord`, under the field's own name; :meth:`TrialRecord.write` sets
them, :meth:`TrialRecord.from_trial` reads them back, and the rest of the project (the worker,
the strategies, the samplers' constraints, the report, the benchmarks) goes through the type.

Per-example values (``TrialRecord.examples``, ``{"task/metric": encoded}``) are packed, since
Optuna stores each user attr as JSON text:

- 0/1 values (``acc``, ``exact_match``): a bit string, ``{"bits": "<base64>", "n": N}``, bit
  ``i`` of the string is example ``i`` (numpy ``packbits``, little bit order): 2,000 examples
  take 340 characters;
- anything else: little-endian float32, ``{"f32": "<base64>", "n": N}`` (2,000 examples: about
  10,700 characters; values come back rounded to float32).

A study of 10,000 trials x 2,000 examples of two 0/1 tasks stores about 7 MB of them.
Standard errors (``stderr``, ``{objective: SE}``) are plain floats, ``None`` where not available
(NaN is not JSON).
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import optuna

    from evaluators.base import Scores


_PLAN = MappingProxyType({"part": "plan"})  # field metadata: what was merged
_SCORE = MappingProxyType({"part": "score"})  # field metadata: what the plan scored


@dataclass(frozen=True)
class TrialRecord:
    """Everything a trial recorded: its plan, its scores and how it was scored.

    Every field but ``number`` and ``values`` (Optuna's own) is a user attr of the same name;
    fields left at their default are not written. The plan fields (:data:`PLAN_FIELDS`) are
    written before the trial is scored; the score fields (:data:`SCORE_FIELDS`) of a trial whose
    plan was already scored are the earlier trial's, with ``duplicate_of`` naming it.
    """

    number: int
    values: tuple[float, ...] = field(default=(), metadata=_SCORE)  # as told to Optuna
    # the plan: what was merged (written before the trial is scored)
    plan: dict[str, Any] | None = field(default=None, metadata=_PLAN)  # MergePlan.to_dict()
    plan_key: str | None = field(default=None, metadata=_PLAN)  # MergePlan.key: the cache key
    params: dict[str, Any] = field(default_factory=dict, metadata=_PLAN)  # the method's params
    coefficients: dict[str, list[float]] = field(default_factory=dict, metadata=_PLAN)  # applied
    worker: str | None = field(default=None, metadata=_PLAN)  # host:pid:device
    seed_trial: str | None = None  # label of a known point enqueued before the sampler's own
    # the scores: shared by every trial of the same plan
    task_scores: dict[str, float] = field(default_factory=dict, metadata=_SCORE)
    stderr: dict[str, float | None] = field(default_factory=dict, metadata=_SCORE)  # objective
    task_stderr: dict[str, float | None] = field(default_factory=dict, metadata=_SCORE)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=_SCORE)  # packed
    # what the strategies recorded of how it was scored, by strategy name, each its own typed
    # fields (search.study.strategy); STOPPED_BY there: the trial that beat it, stopped early
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=_SCORE)
    # how it was scored
    examples_scored: int = 0  # examples this trial scored; 0 when it reused a scored plan
    merge_s: float | None = None
    eval_s: float | None = None
    duplicate_of: int | None = None  # the trial whose scores this plan reused
    constraints: tuple[float, ...] = ()  # the config's bounds, <= 0 feasible (Optuna's convention)
    failed: str | None = None  # why the worker failed it (e.g. its merge held NaN); not retried

    # ------------------------------------------------------------------------------ reading

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial | optuna.Trial) -> TrialRecord:
        """The record of a trial (fields it did not write keep their defaults)."""
        attrs = trial.user_attrs
        known = {f.name for f in dataclasses.fields(cls)} - {"number", "values"}
        kwargs = {k: v for k, v in attrs.items() if k in known}
        if legacy := _legacy_strategy_attrs(attrs):
            kwargs["strategies"] = {**legacy, **kwargs.get("strategies", {})}
        if "constraints" in kwargs:
            kwargs["constraints"] = tuple(kwargs["constraints"])
        told = getattr(trial, "values", None)  # a running optuna.Trial has none yet
        values = tuple(float(v) for v in told) if told else ()
        return cls(number=trial.number, values=values, **kwargs)

    @property
    def stopped_by(self) -> int | None:
        """The trial that beat it when a strategy stopped it before its full evaluation."""
        stops = [f[STOPPED_BY] for f in self.strategies.values() if f.get(STOPPED_BY) is not None]
        return stops[0] if stops else None

    @property
    def stopped(self) -> bool:
        """A strategy stopped it before its full evaluation (its scores are partial)."""
        return self.stopped_by is not None

    @property
    def feasible(self) -> bool:
        """Within the config's bounds and scored in full (a stopped trial is never an answer)."""
        return all(c <= 0 for c in self.constraints) and not self.stopped

    @property
    def key(self) -> str:
        """The plan key, or ``trial-N`` for a trial recorded without one."""
        return self.plan_key or f"trial-{self.number}"

    def per_example(self) -> dict[str, tuple[float, ...]]:
        """The per-example values, unpacked (``{}`` when none were kept)."""
        return decode_examples(self.examples)

    # ------------------------------------------------------------------------------ writing

    @classmethod
    def of_scores(cls, number: int, scores: Scores, names: Sequence[str], **fields: Any):
        """The score fields of a fresh evaluation (``fields``: more, e.g. ``strategies``)."""
        return cls(
            number=number,
            values=tuple(float(scores.objectives[name]) for name in names),
            task_scores={k: float(v) for k, v in scores.tasks.items()},
            stderr=json_stderr(scores.stderr),
            task_stderr=json_stderr(scores.task_stderr),
            examples=encode_examples(scores.examples),
            **fields,
        )

    def with_scores_of(self, scored: TrialRecord, **changes: Any) -> TrialRecord:
        """This record with ``scored``'s score fields (:data:`SCORE_FIELDS`) and ``changes``."""
        taken = {name: getattr(scored, name) for name in SCORE_FIELDS}
        return dataclasses.replace(self, **taken, **changes)

    def to_attrs(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The user attrs to write: every field not at its default (or just ``names``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("number", "values") or (names is not None and f.name not in names):
                continue
            value = getattr(self, f.name)
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            if value != default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def write(self, trial: optuna.Trial, names: Sequence[str] | None = None) -> None:
        """Set :meth:`to_attrs` on a running trial."""
        for name, value in self.to_attrs(names).items():
            trial.set_user_attr(name, value)

    @staticmethod
    def seed_attrs(label: str) -> dict[str, Any]:
        """The user attrs of a seed trial enqueued with ``label`` (``study.enqueue_trial``)."""
        return {"seed_trial": label}


STOPPED_BY = "stopped_by"  # in a strategy's fields: the trial that beat this one, stopped early


def _legacy_strategy_attrs(attrs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Strategy fields that studies written before :attr:`TrialRecord.strategies` kept as
    trial attrs of their own (:attr:`search.strategies.StrategyEntry.attrs`), by strategy."""
    from search.strategies import STRATEGIES

    out: dict[str, dict[str, Any]] = {}
    for name, entry in STRATEGIES.items():
        fields = {new: attrs[old] for old, new in entry.attrs.items() if old in attrs}
        if fields:
            out[name] = fields
    return out


SCORE_FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord) if f.metadata == _SCORE)
PLAN_FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord) if f.metadata == _PLAN)


# ----------------------------------------------------------------------------- packed values


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
