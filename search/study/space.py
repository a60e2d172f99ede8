"""The search space: Optuna distributions built from the config and the method's ParamSpecs.

One float per checkpoint and layer group, plus every method parameter the config gives as a
``{low, high}`` range (named as the parameter: ``density``, ``lambda``, ``t`` ...). Parameters
given as a value, and those not mentioned, are fixed (the method's default). Methods whose
result does not depend on the weights (``slerp``) get no weight parameters.

The weights come in one of two parametrizations (``merge.weights.parametrization``):

* ``independent``: ``w_<checkpoint>`` (``w_<checkpoint>_g<j>`` per layer group) in
  ``merge.weights`` ``[low, high]`` is the weight itself. For a method that normalizes, K
  independent uniform weights divided by their sum crowd around the uniform merge (K = 7:
  P(largest coefficient > 0.6) = 0.0001).
* ``simplex`` (the default for methods that normalize): ``u_<checkpoint>`` in (0, 1] and the
  weight is ``-log u``. For uniform ``u`` the weights are independent Exp(1) draws, and
  Exp(1) draws divided by their sum are uniform on the simplex (Dirichlet(1, ..., 1)), so a
  sampler exploring ``u`` evenly explores every mixture, one leaning 70 % on one checkpoint
  as much as the uniform one (K = 7: P(largest > 0.6) = 0.029). ``u = 1`` is weight 0
  exactly, so a single checkpoint and the uniform merge stay reachable (seed trials).
  Per layer group likewise: each group's weights are normalized on their own.

A trial's suggestions become one :class:`~search.engine.plan.MergePlan`; seed trials are plain
parameter dicts for ``Study.enqueue_trial``.
"""

from __future__ import annotations

import math
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
from search.strategies import get_method
from search.study.config import ParamRange, StudyConfig

ZERO_SUM = 1e-9  # a layer group whose weights sum to less than this cannot be normalized
# Lowest u of the simplex parametrization: (0, 1] needs a positive floor; P(u < 1e-12) is
# negligible, and -log(1e-12) = 27.6 is the largest weight a sampler can ask for.
U_LOW = 1e-12


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
        weight_low, weight_high: range of every weight (``independent`` parametrization).
        simplex: the weights are ``-log u`` with ``u`` searched in (0, 1] (module docstring).
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
    simplex: bool
    uses_weights: bool
    fixed: tuple[tuple[str, ParamValue], ...]
    searched: tuple[Searched, ...]
    plan_seed: int
    zero_sum_invalid: bool

    @classmethod
    def build(cls, cfg: StudyConfig, names: Sequence[str]) -> SearchSpace:
        """The space of ``cfg.merge`` over checkpoints ``names`` (``pool.names``)."""
        merge = cfg.merge
        method = get_method(merge.method)
        fixed = cfg.fixed_params()
        searched = [
            Searched(spec.name, spec.kind, r.low, r.high, r.log, spec.default)
            for spec in method.params
            if isinstance(r := merge.params.get(spec.name), ParamRange)
        ]
        return cls(
            method=method.name,
            names=tuple(names),
            n_groups=merge.layer_groups,
            weight_low=merge.weights.low,
            weight_high=merge.weights.high,
            simplex=method.uses_weights and cfg.weight_parametrization() == "simplex",
            uses_weights=method.uses_weights,
            fixed=tuple(sorted(fixed.items())),
            searched=tuple(searched),
            plan_seed=cfg.sampler.seed or 0,
            zero_sum_invalid=method.uses_weights and bool(method.divides_by_weight_sum(fixed)),
        )

    # -------------------------------------------------------------------------- parameters

    @property
    def parametrization(self) -> str:
        return "simplex" if self.simplex else "independent"

    def weight_param(self, checkpoint: int, group: int) -> str:
        """``w_<checkpoint>`` (independent) or ``u_<checkpoint>`` (simplex), ``_g<j>`` per group."""
        name = f"{'u' if self.simplex else 'w'}_{self.names[checkpoint]}"
        return name if self.n_groups == 1 else f"{name}_g{group}"

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
        low, high = (U_LOW, 1.0) if self.simplex else (self.weight_low, self.weight_high)
        for row in self.weight_params():
            for name in row:
                out[name] = FloatDistribution(low, high)
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
            "parametrization": self.parametrization,
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
            weights = [[self.weight_of(values[n]) for n in row] for row in rows]
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

    def weight_of(self, value: float) -> float:
        """The weight a searched value stands for: itself, or ``-log u`` on the simplex."""
        if not self.simplex:
            return float(value)
        return -math.log(float(value)) + 0.0  # + 0.0: u = 1 is weight 0.0, never -0.0

    def weight_values(self, per_checkpoint: Sequence[float]) -> dict[str, float]:
        """The parameter values that give checkpoint ``i`` the weight ``per_checkpoint[i]`` in
        every layer group: the inverse of :meth:`weight_of` (``u = exp(-w)`` on the simplex,
        so weight 0 is ``u = 1``), clipped into the searched range."""
        out: dict[str, float] = {}
        for i, row in enumerate(self.weight_params()):
            w = float(per_checkpoint[i])
            if self.simplex:
                value = _clip(math.exp(-w), U_LOW, 1.0) if w > 0 else 1.0
            else:
                value = _clip(w, self.weight_low, self.weight_high)
            out.update(dict.fromkeys(row, value))
        return out

    def seed_trials(self, kinds: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
        """``(label, params)`` to enqueue: ``uniform`` (every weight 1/K) and ``single:<name>``
        (weight 1 for one checkpoint, ``low`` for the rest; on the simplex the rest get weight
        0 exactly), clipped to the weight range, with searched method parameters at their
        defaults (clipped to their range).
        A method that ignores weights gets only ``uniform`` (its parameters' defaults).
        """
        k = len(self.names)
        rest = 0.0 if self.simplex else self.weight_low
        defaults = {p.name: _clip(p.default, p.low, p.high, p.kind) for p in self.searched}
        out: list[tuple[str, dict[str, Any]]] = []
        for kind in dict.fromkeys(kinds):
            if kind == "uniform":
                out.append(("uniform", {**self.weight_values([1.0 / k] * k), **defaults}))
            elif kind == "singles" and self.uses_weights:
                for i, name in enumerate(self.names):
                    w = [rest] * k
                    w[i] = 1.0
                    out.append((f"single:{name}", {**self.weight_values(w), **defaults}))
        return out

    def coefficient_params(self, coefficients: Sequence[Sequence[float]]) -> dict[str, Any]:
        """Trial parameters whose plan applies ``coefficients[i][g]`` (each group on the simplex).

        Used to enqueue Frank-Wolfe endpoints. With independent weights these are the
        coefficients themselves; a method that normalizes gives any positive multiple the same
        coefficients, so a group whose largest coefficient exceeds ``high`` is scaled down to
        fit. On the simplex, ``u = exp(−c / max c)`` per group: its normalized ``−log u`` is
        ``c`` again (``c = 0`` is ``u = 1``). Searched method parameters take their defaults, as
        in :meth:`seed_trials`.
        """
        params: dict[str, Any] = {}
        normalizes = bool(dict(self.fixed).get("normalize", False))
        for g in range(self.n_groups):
            column = [float(row[g]) for row in coefficients]
            top = max(column)
            for i, c in enumerate(column):
                if self.simplex:
                    value = _clip(math.exp(-c / top), U_LOW, 1.0) if c > 0 else 1.0
                else:
                    scale = self.weight_high / top if normalizes and top > self.weight_high else 1
                    value = _clip(c * scale, self.weight_low, self.weight_high)
                params[self.weight_param(i, g)] = value
        params.update({p.name: _clip(p.default, p.low, p.high, p.kind) for p in self.searched})
        return params


def _clip(value: float, low: float, high: float, kind: str = "float") -> float | int:
    v = min(max(float(value), low), high)
    return round(v) if kind == "int" else v
