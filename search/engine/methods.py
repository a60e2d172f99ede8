"""Merge methods' tensor math: pure functions, one tensor at a time (declared in the registry).

A method's ``merge`` function takes

- ``inputs``: the K checkpoints' versions of the tensor, stacked ``[K, *shape]`` (any float dtype),
- ``base``: the base model's version (``None`` for methods without a base),
- ``weights``: a float32 ``[K]`` tensor, the plan's weights for the layer group of this tensor,
- ``params``: the method's parameters, complete (defaults filled in, ranges checked),
- ``generator``: a seeded ``torch.Generator`` (used by the stochastic methods),

and returns the merged tensor in float32 (float64 for float64 inputs). Nothing else is read or
written. Methods whose result is a fixed linear combination (``linear``, ``task_arithmetic``) also
have a coefficient function (``linear_coefficients``, ``task_arithmetic_coefficients``) so
:mod:`search.engine.materialize` can run them as one fused weighted sum.

Which function runs which method, with which settings, is declared in
:mod:`search.engine.registry`: ``task_arithmetic``'s sparsified relatives (``ties``,
``dare_linear``, ``dare_ties``, ``breadcrumbs``) are :func:`task_vector_merge` with a different
sparsification and sign election.

A method that reads per-tensor extras (``extras`` in its declaration; provided by a strategy,
:mod:`search.engine.extras`) also gets one keyword argument per kind: the ``[K, ...]`` stack of
that kind for this tensor, held by the pool beside the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from search.engine.dtypes import work_dtype
from search.engine.registry import ParamValue

SLERP_DOT_THRESHOLD = 0.9995  # |cos| above this: the vectors are nearly parallel, go linear


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
    work = work_dtype(inputs.dtype)
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
    work = work_dtype(inputs.dtype)
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
    work = work_dtype(inputs.dtype)
    flat = inputs.reshape(k, -1).to(work)
    return (coeffs.to(work) @ flat).reshape(inputs.shape[1:])


def task_arithmetic_merge(
    inputs: torch.Tensor,
    base: torch.Tensor | None,
    weights: torch.Tensor,
    params: Mapping[str, ParamValue],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """θ = θ_b + λ Σ w_i (θ_i − θ_b), computed from :func:`task_arithmetic_coefficients`."""
    coeffs, base_coeff = task_arithmetic_coefficients(weights, params)
    out = _combine(inputs, coeffs)
    if base is not None and base_coeff != 0.0:
        out = out + base_coeff * base.to(out.dtype)
    return out
