"""Merge methods: pure tensor functions behind one registry, each declaring its parameters.

A method merges one tensor at a time. Its ``merge`` function takes

- ``inputs``: the K checkpoints' versions of the tensor, stacked ``[K, *shape]`` (any float dtype),
- ``base``: the base model's version (``None`` for methods without a base),
- ``weights``: a float32 ``[K]`` tensor, the plan's weights for the layer group of this tensor,
- ``params``: the method's parameters, complete (defaults filled in, ranges checked),
- ``generator``: a seeded ``torch.Generator`` (used by the stochastic methods),

and returns the merged tensor in float32 (float64 for float64 inputs). Nothing else is read or
written. Methods whose result is a fixed linear combination (``linear``, ``task_arithmetic``) also
expose ``linear_form`` so :mod:`search.materialize` can run them as one fused weighted sum.

Variants are settings of one implementation: ``task_arithmetic``, ``ties``, ``dare_linear``,
``dare_ties`` and ``breadcrumbs`` are :func:`task_vector_merge` with a different sparsification
and sign election. To add a method: write its function, declare a :class:`MergeMethod` below,
and add it to :data:`METHODS`; the contract tests in ``tests/search/test_methods.py`` pick it up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from search.errors import UserError

ParamValue = float | int | bool
MergeFn = Callable[..., torch.Tensor]
SLERP_DOT_THRESHOLD = (
    0.9995  # |cos| above this: the vectors are nearly parallel, interpolate linearly
)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a method: its type, valid range (inclusive) and default."""

    name: str
    kind: str  # "float" | "bool" | "int"
    low: float | None = None
    high: float | None = None
    default: ParamValue = 0.0
    doc: str = ""

    def check(self, value: Any) -> ParamValue:
        """The value converted to ``kind``; ``ValueError`` naming the range when it is outside."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.name}: expected true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}: expected a number, got {value!r}")
        if self.kind == "int":
            if float(value) != int(value):
                raise ValueError(f"{self.name}: expected an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if not math.isfinite(value) or (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
        ):
            raise ValueError(
                f"{self.name}: expected a value in [{self.low}, {self.high}], got {value}"
            )
        return value


@dataclass(frozen=True)
class MergeMethod:
    """A named merge method: its tensor function and what it needs.

    Attributes:
        name: registry key, the ``method`` of a :class:`~search.plan.MergePlan`.
        merge: the pure tensor function (see the module docstring for its signature).
        params: the parameters it reads from ``plan.params``; a search space is built from these.
        needs_base: whether it reads the base model (task vectors are ``θ_i − θ_base``).
        n_checkpoints: exact number of checkpoints it merges, ``None`` for any number.
        mergekit_name: the same method's name in mergekit, ``None`` if mergekit lacks it.
        linear_form: ``(weights[K], params) -> (coefficients[K], base coefficient)`` when the
            result is ``Σ c_k θ_k + c_b θ_base``; lets materialize run one fused weighted sum.
        coefficients: ``(weights of one layer group, params) -> the coefficient applied to each
            checkpoint`` for reporting (normalized when the method normalizes).
        divides_by_weight_sum: whether, with ``params``, it divides by the plain sum of weights
            (then a layer group whose weights sum to 0 is an error).
        stochastic: whether ``merge`` draws from ``generator``.
        doc: one line for the README and model card.
    """

    name: str
    merge: MergeFn
    params: tuple[ParamSpec, ...]
    needs_base: bool
    coefficients: Callable[[Sequence[float], Mapping[str, ParamValue]], list[float]]
    divides_by_weight_sum: Callable[[Mapping[str, ParamValue]], bool] = lambda params: False
    n_checkpoints: int | None = None
    mergekit_name: str | None = None
    linear_form: Callable[..., tuple[torch.Tensor, float]] | None = None
    stochastic: bool = False
    doc: str = ""
    param_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_names", frozenset(p.name for p in self.params))

    def resolve_params(
        self, given: Mapping[str, Any] | Sequence[tuple[str, Any]]
    ) -> dict[str, ParamValue]:
        """All parameters with defaults filled in; ``UserError`` for unknown names or bad values."""
        given = dict(given)
        unknown = sorted(set(given) - self.param_names)
        if unknown:
            supported = ", ".join(p.name for p in self.params) or "none"
            raise UserError(
                f"method {self.name}: unknown parameter {', '.join(unknown)}; "
                f"supported: {supported}"
            )
        resolved: dict[str, ParamValue] = {}
        for spec in self.params:
            try:
                resolved[spec.name] = spec.check(given.get(spec.name, spec.default))
            except ValueError as exc:
                raise UserError(f"method {self.name}: parameter {exc}") from None
        return resolved


# ---------------------------------------------------------------------------------------------
# Tensor functions


def linear_merge(
    inputs: torch.Tensor,
    base: torch.Tensor | None,
    weights: torch.Tensor,
    params: Mapping[str, ParamValue],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """θ = Σ w_i θ_i, divided by Σ w_i when ``normalize``."""
    coeffs, _ = linear_coefficients(weights, params)
    return _combine(inputs, coeffs)


def linear_coefficients(
    weights: torch.Tensor, params: Mapping[str, ParamValue]
) -> tuple[torch.Tensor, float]:
    """The linear soup as ``(c, c_base)``: ``c = w / Σw`` when normalized, else ``w``."""
    w = weights if weights.dtype == torch.float64 else weights.float()
    if params["normalize"]:
        w = w / w.sum()
    return w, 0.0


def task_arithmetic_coefficients(
    weights: torch.Tensor, params: Mapping[str, ParamValue]
) -> tuple[torch.Tensor, float]:
    """θ_b + λ Σ w_i (θ_i − θ_b) = Σ λw_i θ_i + (1 − λ Σ w_i) θ_b."""
    c = (weights if weights.dtype == torch.float64 else weights.float()) * float(params["lambda"])
    return c, 1.0 - float(c.double().sum())


def task_vector_merge(
    inputs: torch.Tensor,
    base: torch.Tensor | None,
    weights: torch.Tensor,
    params: Mapping[str, ParamValue],
    generator: torch.Generator | None = None,
    *,
    sparsify: str | None,
    elect_sign: bool,
) -> torch.Tensor:
    """The task-vector family: θ = θ_b + λ · combine(sparsify(w_i·(θ_i − θ_b))).

    Args:
        sparsify: ``None`` (keep all), ``"magnitude"`` (TIES trim: keep the top ``density``
            fraction of each task vector by magnitude), ``"random"`` (DARE: keep each entry with
            probability ``density``, scale kept ones by 1/density) or ``"band"`` (breadcrumbs:
            drop the largest ``gamma`` fraction and the smallest, keeping ``density``).
        elect_sign: TIES sign election: per entry, the sign of Σ w_i τ_i; only entries that
            agree with it are summed, and ``normalize`` divides by the agreeing weights' sum.
    """
    if base is None:
        raise ValueError("task_vector_merge needs the base tensor")
    k = inputs.shape[0]
    work = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    base_w = base.to(work)
    deltas = inputs.to(work).reshape(k, -1) - base_w.reshape(1, -1)
    density = float(params.get("density", 1.0))
    if sparsify == "magnitude":
        deltas = keep_top_magnitude(deltas, density)
    elif sparsify == "random":
        deltas = drop_and_rescale(deltas, density, generator)
    elif sparsify == "band":
        deltas = keep_magnitude_band(deltas, density, float(params["gamma"]))
    w = weights.to(work).reshape(k, 1)
    weighted = deltas * w
    normalize = bool(params.get("normalize", False))
    if elect_sign:
        elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(work)
        agree = (torch.sign(weighted) == elected).to(work)
        mixed = (weighted * agree).sum(0)
        if normalize:
            divisor = (w * agree).sum(0)
            mixed = mixed / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    else:
        mixed = weighted.sum(0)
        if normalize:
            mixed = mixed / w.sum()
    lam = float(params.get("lambda", 1.0))
    return base_w + (lam * mixed).reshape(base.shape)


def keep_top_magnitude(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """Per row, keep the ``max(1, int(density·n))`` largest-magnitude entries (TIES trim)."""
    if density >= 1:
        return deltas
    n = deltas.shape[1]
    if density <= 0 or n == 0:
        return torch.zeros_like(deltas)
    keep = max(1, int(density * n))
    idx = torch.topk(deltas.abs(), keep, dim=1).indices
    mask = torch.zeros_like(deltas).scatter_(1, idx, 1.0)
    return deltas * mask


def keep_magnitude_band(deltas: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Per row, drop the ``int(gamma·n)`` largest and the smallest, keeping ``int(density·n)``."""
    if density >= 1:
        return deltas
    n = deltas.shape[1]
    keep = int(density * n)
    n_top = int(gamma * n)
    n_bottom = max(0, n - keep - n_top)  # shrink the outlier cut when it would eat the band
    order = torch.sort(deltas.abs(), dim=1).indices  # ascending
    mask = torch.zeros_like(deltas).scatter_(1, order[:, n_bottom : n_bottom + keep], 1.0)
    return deltas * mask


def drop_and_rescale(
    deltas: torch.Tensor, density: float, generator: torch.Generator | None
) -> torch.Tensor:
    """DARE: keep each entry with probability ``density``, scale the kept ones by 1/density."""
    if density >= 1:
        return deltas
    if density <= 0:
        return torch.zeros_like(deltas)
    draws = torch.rand(deltas.shape, generator=generator, device=deltas.device, dtype=torch.float32)
    return torch.where(draws < density, deltas / density, torch.zeros_like(deltas))


def slerp_merge(
    inputs: torch.Tensor,
    base: torch.Tensor | None,
    weights: torch.Tensor,
    params: Mapping[str, ParamValue],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Spherical interpolation from checkpoint 0 (t = 0) to checkpoint 1 (t = 1), per tensor.

    The two tensors are treated as flat vectors; when they are nearly parallel (|cos θ| >
    :data:`SLERP_DOT_THRESHOLD`) or one is zero, the result is the linear interpolation.
    ``weights`` are not used: ``t`` is the one coefficient.
    """
    if inputs.shape[0] != 2:
        raise ValueError(f"slerp merges exactly 2 checkpoints, got {inputs.shape[0]}")
    t = float(params["t"])
    work = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    a = inputs[0].to(work)
    b = inputs[1].to(work)
    norm_a = float(torch.linalg.vector_norm(a, dtype=torch.float64))
    norm_b = float(torch.linalg.vector_norm(b, dtype=torch.float64))
    if norm_a < 1e-12 or norm_b < 1e-12:
        return (1 - t) * a + t * b
    dot = float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double())) / (norm_a * norm_b)
    dot = max(-1.0, min(1.0, dot))
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return (1 - t) * a + t * b
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return (math.sin((1 - t) * theta) / sin_theta) * a + (math.sin(t * theta) / sin_theta) * b


def _combine(inputs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    k = inputs.shape[0]
    work = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    flat = inputs.reshape(k, -1).to(work)
    return (coeffs.to(work) @ flat).reshape(inputs.shape[1:])


def _linear_merge_form(form: Callable[..., tuple[torch.Tensor, float]]) -> MergeFn:
    """A ``merge`` function computed from a method's ``linear_form`` (used for task arithmetic)."""

    def merge(inputs, base, weights, params, generator=None):
        coeffs, base_coeff = form(weights, params)
        out = _combine(inputs, coeffs)
        if base is not None and base_coeff != 0.0:
            out = out + base_coeff * base.to(out.dtype)
        return out

    return merge


# ---------------------------------------------------------------------------------------------
# Reporting coefficients: what each checkpoint contributes, per layer group


def _normalized(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    if total == 0:
        raise UserError(f"weights {list(weights)} sum to 0; normalize divides by their sum")
    return [w / total for w in weights]


def _lambda_scaled(weights: Sequence[float], params: Mapping[str, ParamValue]) -> list[float]:
    lam = float(params.get("lambda", 1.0))
    base = _normalized(weights) if params.get("normalize", False) else list(weights)
    return [lam * w for w in base]


# ---------------------------------------------------------------------------------------------
# Parameter declarations and the registry

_DENSITY = ParamSpec("density", "float", 0.01, 1.0, 0.5, "fraction of each task vector kept")
_LAMBDA = ParamSpec("lambda", "float", 0.0, 2.0, 1.0, "scale of the merged task vector")
_GAMMA = ParamSpec(
    "gamma", "float", 0.0, 0.5, 0.01, "fraction of largest-magnitude entries dropped"
)


def _normalize_param(default: bool) -> ParamSpec:
    return ParamSpec("normalize", "bool", None, None, default, "divide by the sum of weights")


def _normalizes(params: Mapping[str, ParamValue]) -> bool:
    return bool(params.get("normalize", False))


LINEAR = MergeMethod(
    name="linear",
    merge=linear_merge,
    params=(_normalize_param(True),),
    needs_base=False,
    coefficients=lambda w, p: _normalized(w) if p["normalize"] else list(w),
    divides_by_weight_sum=_normalizes,
    mergekit_name="linear",
    linear_form=linear_coefficients,
    doc="θ = Σ w_i θ_i (÷ Σ w_i when normalize)",
)
TASK_ARITHMETIC = MergeMethod(
    name="task_arithmetic",
    merge=_linear_merge_form(task_arithmetic_coefficients),
    params=(_LAMBDA,),
    needs_base=True,
    coefficients=_lambda_scaled,
    mergekit_name="task_arithmetic",
    linear_form=task_arithmetic_coefficients,
    doc="θ = θ_b + λ Σ w_i (θ_i − θ_b)",
)
TIES = MergeMethod(
    name="ties",
    merge=partial(task_vector_merge, sparsify="magnitude", elect_sign=True),
    params=(_DENSITY, _LAMBDA, _normalize_param(True)),
    needs_base=True,
    coefficients=_lambda_scaled,
    mergekit_name="ties",
    doc="trim each task vector to its top density, elect signs, disjoint (weighted) mean",
)
DARE_LINEAR = MergeMethod(
    name="dare_linear",
    merge=partial(task_vector_merge, sparsify="random", elect_sign=False),
    params=(_DENSITY, _LAMBDA),
    needs_base=True,
    coefficients=_lambda_scaled,
    mergekit_name="dare_linear",
    stochastic=True,
    doc="drop task-vector entries with probability 1 − density, rescale by 1/density, sum",
)
DARE_TIES = MergeMethod(
    name="dare_ties",
    merge=partial(task_vector_merge, sparsify="random", elect_sign=True),
    params=(_DENSITY, _LAMBDA),
    needs_base=True,
    coefficients=_lambda_scaled,
    mergekit_name="dare_ties",
    stochastic=True,
    doc="DARE drop and rescale, then TIES sign election",
)
BREADCRUMBS = MergeMethod(
    name="breadcrumbs",
    merge=partial(task_vector_merge, sparsify="band", elect_sign=False),
    params=(_DENSITY, _GAMMA, _LAMBDA),
    needs_base=True,
    coefficients=_lambda_scaled,
    mergekit_name="breadcrumbs",
    doc="drop the largest gamma and the smallest entries of each task vector, keep density, sum",
)
SLERP = MergeMethod(
    name="slerp",
    merge=slerp_merge,
    params=(ParamSpec("t", "float", 0.0, 1.0, 0.5, "0 = first checkpoint, 1 = second"),),
    needs_base=False,
    coefficients=lambda w, p: [1.0 - float(p["t"]), float(p["t"])],
    n_checkpoints=2,
    mergekit_name="slerp",
    doc="spherical interpolation between two checkpoints (linear when nearly parallel)",
)

METHODS: dict[str, MergeMethod] = {
    m.name: m for m in (LINEAR, TASK_ARITHMETIC, TIES, DARE_LINEAR, DARE_TIES, BREADCRUMBS, SLERP)
}


def get_method(name: str) -> MergeMethod:
    """The registered method ``name``; ``UserError`` listing the supported names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown merge method {name!r}; supported: {', '.join(METHODS)}") from None
