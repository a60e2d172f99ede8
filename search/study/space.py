"""The search space: Optuna distributions built from the config and the method's ParamSpecs.

One float per checkpoint and layer group (``w_<checkpoint>`` or ``w_<checkpoint>_g<j>``) in
``merge.weights`` ``[low, high]``, plus every method parameter the config gives as a
``{low, high}`` range (named as the parameter: ``density``, ``lambda``, ``t`` ...). Parameters
given as a value, and those not mentioned, are fixed (the method's default). Methods whose
result does not depend on the weights (``slerp``) get no weight parameters.

A trial's suggestions become one :class:`~search.engine.plan.MergePlan`; seed trials are plain
parameter dicts for ``Study.enqueue_trial``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from search.engine.plan import MergePlan, ParamValue
from search.engine.registry import METHODS
from search.study.config import ParamRange, StudyConfig

ZERO_SUM = 1e-9  # a layer group whose weights sum to less than this cannot be normalized


@dataclass(frozen=True)
class Searched:
    """A method parameter searched in ``[low, high]``."""

    name: str
    kind: str  # "float" | "int"
    low: float
    high: float
    log: bool
    default: ParamValue


@dataclass(frozen=True)
class SearchSpace:
    """Everything a trial may vary, and how its values become a plan.

    Attributes:
        method: the merge method's name.
        names: checkpoint names (the pool's), in pool order.
        n_groups: layer groups; one weight per checkpoint and group.
        weight_low, weight_high: range of every weight.
        uses_weights: False for methods that ignore weights (then no weight parameters).
        fixed: method parameters held fixed (including ``normalize``).
        searched: method parameters searched.
        plan_seed: seed of every plan (stochastic methods draw the same masks for equal plans).
        zero_sum_invalid: the method divides by the weights' sum (a zero sum is pruned).
    """

    method: str
    names: tuple[str, ...]
    n_groups: int
    weight_low: float
    weight_high: float
    uses_weights: bool
    fixed: tuple[tuple[str, ParamValue], ...]
    searched: tuple[Searched, ...]
    plan_seed: int
    zero_sum_invalid: bool

    @classmethod
    def build(cls, cfg: StudyConfig, names: Sequence[str]) -> SearchSpace:
        """The space of ``cfg.merge`` over checkpoints ``names`` (``pool.names``)."""
        merge = cfg.merge
        method = METHODS[merge.method]
        fixed: dict[str, ParamValue] = {}
        searched: list[Searched] = []
        for spec in method.params:
            value = merge.params.get(spec.name)
            if spec.name == "normalize":
                value = merge.weights.normalize
            if isinstance(value, ParamRange):
                searched.append(
                    Searched(spec.name, spec.kind, value.low, value.high, value.log, spec.default)
                )
            else:
                fixed[spec.name] = spec.default if value is None else value
        return cls(
            method=method.name,
            names=tuple(names),
            n_groups=merge.layer_groups,
            weight_low=merge.weights.low,
            weight_high=merge.weights.high,
            uses_weights=method.uses_weights,
            fixed=tuple(sorted(fixed.items())),
            searched=tuple(searched),
            plan_seed=cfg.sampler.seed or 0,
            zero_sum_invalid=method.uses_weights and bool(method.divides_by_weight_sum(fixed)),
        )

    # -------------------------------------------------------------------------- parameters

    def weight_param(self, checkpoint: int, group: int) -> str:
        name = self.names[checkpoint]
        return f"w_{name}" if self.n_groups == 1 else f"w_{name}_g{group}"

    def weight_params(self) -> list[list[str]]:
        """Parameter names as ``[checkpoint][group]`` (empty when the method ignores weights)."""
        if not self.uses_weights:
            return []
        return [
            [self.weight_param(i, g) for g in range(self.n_groups)] for i in range(len(self.names))
        ]

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every searched parameter's Optuna distribution, weights first."""
        out: dict[str, Any] = {}
        for row in self.weight_params():
            for name in row:
                out[name] = FloatDistribution(self.weight_low, self.weight_high)
        for p in self.searched:
            if p.kind == "int":
                out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log)
            else:
                out[p.name] = FloatDistribution(p.low, p.high, log=p.log)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able description; a study refuses to resume when it changes."""
        return {
            "method": self.method,
            "fixed": dict(self.fixed),
            "plan_seed": self.plan_seed,
            "distributions": {n: distribution_to_json(d) for n, d in self.distributions().items()},
        }

    # -------------------------------------------------------------------------------- plans

    def suggest(self, trial: optuna.Trial) -> MergePlan:
        """Ask the trial for every parameter and build the plan.

        Raises:
            optuna.TrialPruned: the method normalizes and a layer group's weights sum to ~0.
        """
        values: dict[str, Any] = {}
        for name, dist in self.distributions().items():
            if dist.__class__.__name__ == "IntDistribution":
                values[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
            else:
                values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        return self.plan(values)

    def plan(self, values: Mapping[str, Any]) -> MergePlan:
        """The plan for one set of parameter values (as stored in ``trial.params``)."""
        rows = self.weight_params()
        if rows:
            weights = [[float(values[n]) for n in row] for row in rows]
        else:
            weights = [[1.0] * self.n_groups for _ in self.names]
        if self.zero_sum_invalid:
            for g in range(self.n_groups):
                if abs(sum(w[g] for w in weights)) < ZERO_SUM:
                    raise optuna.TrialPruned(
                        f"weights of layer group {g} sum to 0; cannot normalize"
                    )
        params: dict[str, ParamValue] = dict(self.fixed)
        for p in self.searched:
            params[p.name] = int(values[p.name]) if p.kind == "int" else float(values[p.name])
        return MergePlan.create(self.method, weights, params, seed=self.plan_seed)

    def seed_trials(self, kinds: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
        """``(label, params)`` to enqueue: ``uniform`` (every weight 1/K) and ``single:<name>``
        (weight 1 for one checkpoint, ``low`` for the rest), both clipped to the weight range,
        with searched method parameters at their defaults (clipped to their range).
        A method that ignores weights gets only ``uniform`` (its parameters' defaults).
        """
        k = len(self.names)
        defaults = {p.name: _clip(p.default, p.low, p.high, p.kind) for p in self.searched}
        out: list[tuple[str, dict[str, Any]]] = []
        for kind in dict.fromkeys(kinds):
            if kind == "uniform":
                w = [_clip(1.0 / k, self.weight_low, self.weight_high)] * k
                out.append(("uniform", {**self._weights_dict(w), **defaults}))
            elif kind == "singles" and self.uses_weights:
                for i, name in enumerate(self.names):
                    w = [self.weight_low] * k
                    w[i] = _clip(1.0, self.weight_low, self.weight_high)
                    out.append((f"single:{name}", {**self._weights_dict(w), **defaults}))
        return out

    def coefficient_params(self, coefficients: Sequence[Sequence[float]]) -> dict[str, Any]:
        """Trial parameters whose plan applies ``coefficients[i][g]`` (each group on the simplex).

        Used to enqueue Frank-Wolfe endpoints. With independent weights these are the
        coefficients themselves; a method that normalizes gives any positive multiple the same
        coefficients, so a group whose largest coefficient exceeds ``high`` is scaled down to
        fit. Searched method parameters take their defaults, as in :meth:`seed_trials`.
        """
        params: dict[str, Any] = {}
        normalizes = bool(dict(self.fixed).get("normalize", False))
        for g in range(self.n_groups):
            column = [float(row[g]) for row in coefficients]
            top = max(column)
            scale = self.weight_high / top if normalizes and top > self.weight_high else 1.0
            for i, c in enumerate(column):
                params[self.weight_param(i, g)] = _clip(
                    c * scale, self.weight_low, self.weight_high
                )
        params.update({p.name: _clip(p.default, p.low, p.high, p.kind) for p in self.searched})
        return params

    def _weights_dict(self, per_checkpoint: Sequence[float]) -> dict[str, float]:
        return {n: per_checkpoint[i] for i, row in enumerate(self.weight_params()) for n in row}


def _clip(value: float, low: float, high: float, kind: str = "float") -> float | int:
    v = min(max(float(value), low), high)
    return round(v) if kind == "int" else v
