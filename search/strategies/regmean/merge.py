"""RegMean's tensor math (Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of
Language Models"), as pure tensor functions.

A linear layer ``y = x Wᵀ`` (torch's ``W`` is ``[out, in]``) merged from K checkpoints minimizes
``Σ_i w_i ‖X_i Wᵀ − X_i W_iᵀ‖²`` over its inputs ``X_i`` (checkpoint i's own inputs to that layer
on its calibration examples); the minimum is ``Wᵀ = (Σ_i w_i G_i)⁻¹ Σ_i w_i G_i W_iᵀ`` with the
Gram matrix ``G_i = X_iᵀ X_i`` (``[in, in]``). Every off-diagonal entry of each ``G_i`` is first
multiplied by ``alpha`` (the paper's α): 1 is the plain formula; 0 leaves the diagonals alone, a
mean of the checkpoints' weights per input feature weighted by ``w_i`` times that feature's
energy. With uniform ``w`` this is the paper's RegMean (a common factor of the ``w_i`` or of the
Grams cancels). Every other tensor (embeddings, norms, ``lm_head``, biases) is the weighted mean
``Σ w_i θ_i / Σ w_i``, as the paper averages them.

Solved with ``torch.linalg.solve`` (never an explicit inverse) in float32 (float64 for float64
pools). Where ``Σ w_i G_i`` is singular (its Cholesky factorization fails: an input feature
that is zero in every checkpoint's data, fewer positions than input features), the system gets
a ridge toward the weighted mean: ``(A + εI) Wᵀ = B + ε W̄ᵀ`` with ``ε`` = :data:`RIDGE` × the
mean of ``A``'s diagonal, so a feature no data reaches keeps the weighted mean of its weights and
the others move by about :data:`RIDGE` relatively. A regular system is solved as it is.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from search.engine.dtypes import work_dtype
from search.engine.registry import ParamValue

RIDGE = 1e-6  # relative to the mean diagonal entry; only for a singular Σ w_i G_i


def regmean_merge(
    inputs: torch.Tensor,
    base: torch.Tensor | None,
    weights: torch.Tensor,
    params: Mapping[str, ParamValue],
    generator: torch.Generator | None = None,
    *,
    gram: torch.Tensor | None,
) -> torch.Tensor:
    """The method's tensor function: :func:`regmean_linear` for a tensor with Grams (``gram``:
    the ``[K, in, in]`` stack, the pool's extras of kind ``gram``), else :func:`weighted_mean`.

    The weights are >= 0 with a positive sum (the registry declares ``min_weight`` and
    ``divides_by_weight_sum``).
    """
    work = work_dtype(inputs.dtype)
    w = weights.to(device=inputs.device, dtype=work)
    if gram is None:
        return weighted_mean(inputs.to(work), w)
    return regmean_linear(inputs.to(work), gram.to(work), w, float(params.get("alpha", 1.0)))


def weighted_mean(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i θ_i / Σ_i w_i`` over the first dimension of ``stack`` ``[K, *shape]``."""
    w = weights.reshape(-1, *([1] * (stack.dim() - 1)))
    return (w * stack).sum(0) / weights.sum()


def scale_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha · G + (1 − alpha) · diag(G)`` for each ``[..., n, n]`` matrix (a new tensor)."""
    if alpha == 1.0:
        return gram.clone()
    diagonal = torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
    return gram * alpha + diagonal * (1.0 - alpha)


def regmean_linear(
    weight: torch.Tensor, gram: torch.Tensor, weights: torch.Tensor, alpha: float
) -> torch.Tensor:
    """RegMean of one linear layer: ``Wᵀ = (Σ w_i G̃_i)⁻¹ Σ w_i G̃_i W_iᵀ``.

    Args:
        weight: ``[K, out, in]``, the checkpoints' weights (torch's ``[out, in]`` layout).
        gram: ``[K, in, in]``, each checkpoint's Gram matrix of its inputs to the layer.
        weights: ``[K]``, >= 0 with a positive sum.
        alpha: the off-diagonal scale of every ``G_i`` (``G̃_i``), in ``[0, 1]``.

    Returns:
        ``[out, in]`` in ``weight``'s dtype.
    """
    w = weights.reshape(-1, 1, 1)
    scaled = scale_off_diagonal(gram, alpha) * w  # w_i G̃_i
    a = scaled.sum(0)  # [in, in]
    b = (scaled @ weight.transpose(1, 2)).sum(0)  # Σ w_i G̃_i W_iᵀ, [in, out]
    # Σ w_i G̃_i is positive semi-definite: Cholesky succeeds exactly when it is numerically
    # positive definite, i.e. when the system has one solution
    singular = int(torch.linalg.cholesky_ex(a).info) != 0
    solution = None if singular else torch.linalg.solve(a, b)
    if solution is None or not bool(torch.isfinite(solution).all()):
        mean = weighted_mean(weight, weights).transpose(0, 1)  # W̄ᵀ, [in, out]
        diagonal = torch.diagonal(a)
        eps = RIDGE * float(diagonal.mean()) if float(diagonal.mean()) > 0 else 1.0
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        solution = torch.linalg.solve(a + eps * eye, b + eps * mean)
    return solution.transpose(0, 1)
