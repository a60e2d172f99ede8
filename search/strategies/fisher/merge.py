"""Fisher merging's tensor math: θ = Σ w_i F_i θ_i / Σ w_i F_i per entry (Matena & Raffel).

:func:`fisher_merge` is the method's pure tensor function (the ``[K, *shape]`` Fisher stack comes
as ``fisher=``, the pool's per-tensor extras of kind ``fisher``); :class:`FisherMean` is its fused
kernel, built once per pool (:func:`fused_kernel`): ``compiled`` (a fused, unrolled loop) for
half-precision storage, where the eager column-block loop (:func:`fisher_weighted_mean`,
``chunked``) measured 4x slower than the compiled one on this CPU; ``chunked`` for float32 and
float64 (float32 compiled was about 2.5x faster at 8 x 4 M entries, but costs several seconds of
compilation per worker even for small models).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import torch

from search.engine.dtypes import work_dtype
from search.engine.kernels import can_compile, fused_or_eager
from search.engine.registry import ParamValue

FISHER_FLOOR = 1e-6  # Matena & Raffel's floor: no entry's Fisher is below it
# Columns per block of the Fisher kernel: K x 64 Ki float32 numerator terms stay in L2/L3.
FISHER_CHUNK = 1 << 16


def fisher_merge(
    inputs: torch.Tensor,
    base: torch.Tensor | None,
    weights: torch.Tensor,
    params: Mapping[str, ParamValue],
    generator: torch.Generator | None = None,
    *,
    fisher: torch.Tensor,
) -> torch.Tensor:
    """Fisher merging: θ = Σ w_i F_i θ_i / Σ w_i F_i per entry (Matena & Raffel).

    ``fisher`` is the ``[K, *shape]`` stack of the checkpoints' diagonal Fishers (any float
    dtype); entries below :data:`FISHER_FLOOR` count as the floor. With equal Fishers this is the
    normalized linear soup. The weights must be >= 0 with a positive sum (the registry declares
    ``min_weight`` and ``divides_by_weight_sum``), so every denominator is positive.
    """
    work = work_dtype(inputs.dtype)
    out = torch.empty(inputs.shape[1:], dtype=work, device=inputs.device)
    fisher_weighted_mean(inputs, fisher, weights, out)
    return out


def fisher_weighted_mean(
    stack: torch.Tensor, fisher: torch.Tensor, weights: torch.Tensor, out: torch.Tensor
) -> None:
    """``out = Σ_k w_k F_k X_k / Σ_k w_k F_k`` in one pass over the 2K inputs.

    Written here rather than as torch ops on whole tensors: those would materialize ``[K, n]``
    float32 products (a pool's worth of temporaries) and read every input several times. Column
    blocks of :data:`FISHER_CHUNK` entries are up-cast to float32 (float64 for float64 inputs)
    in cache, and the numerator and the denominator are both reduced from the same block, so
    each input is read from memory once.
    """
    k = stack.shape[0]
    work = work_dtype(stack.dtype)
    x = stack.reshape(k, -1)
    f = fisher.reshape(k, -1)
    flat = out.view(-1)
    w = weights.to(device=stack.device, dtype=work).reshape(k, 1)
    n = x.shape[1]
    for start in range(0, n, FISHER_CHUNK):
        stop = min(n, start + FISHER_CHUNK)
        wf = f[:, start:stop].to(work).clamp_min(FISHER_FLOOR).mul_(w)  # a copy: F stays
        numerator = (wf * x[:, start:stop].to(work)).sum(0)
        flat[start:stop].copy_(numerator.div_(wf.sum(0)))


def fisher_mean_unrolled(
    stack: torch.Tensor, fisher: torch.Tensor, weights: torch.Tensor, out: torch.Tensor
) -> None:
    """``out = Σ_k w_k F_k X_k / Σ_k w_k F_k`` (F floored) as a loop a compiler fuses."""
    f = fisher[0].float().clamp_min(FISHER_FLOOR) * weights[0]
    numerator = f * stack[0].float()
    denominator = f
    for k in range(1, stack.shape[0]):
        f = fisher[k].float().clamp_min(FISHER_FLOOR) * weights[k]
        numerator = numerator + f * stack[k].float()
        denominator = denominator + f
    out.copy_(numerator / denominator)


class FisherMean:
    """The Fisher-merge kernel of one pool: ``fm(out, stack, weights, fisher=...)``.

    ``stack`` and ``fisher`` are ``[K, *shape]``; ``weights`` a float ``[K]`` tensor on the
    pool's device; ``out`` is written in place (any float dtype). Accumulates in float32
    (float64 for float64 storage, which always runs ``chunked``).
    """

    def __init__(self, kind: str) -> None:
        if kind not in ("compiled", "chunked"):
            raise ValueError(f"fisher kernel: expected compiled or chunked, got {kind!r}")
        self.kind = kind
        self._compiled: Callable | None = None

    def __call__(
        self, out: torch.Tensor, stack: torch.Tensor, weights: torch.Tensor, fisher: torch.Tensor
    ) -> None:
        if self.kind == "chunked" or stack.dtype == torch.float64 or not out.is_contiguous():
            fisher_weighted_mean(stack, fisher, weights, out)
            return
        if self._compiled is None:
            self._compiled = torch.compile(fisher_mean_unrolled, dynamic=True)
        k = stack.shape[0]
        fused = partial(  # flat aliases that are not views, as in WeightedSum
            self._compiled,
            stack.detach().view(k, -1).detach(),
            fisher.detach().view(k, -1).detach(),
            weights.float(),
            out.detach().view(-1).detach(),
        )
        if not fused_or_eager(fused, "Fisher kernel"):
            self.kind = "chunked"
            fisher_weighted_mean(stack, fisher, weights, out)


def choose_fisher_kernel(
    device: torch.device, dtype: torch.dtype, kind: str = "auto"
) -> FisherMean:
    """``compiled`` for half-precision storage with a compiler, else ``chunked`` (module doc)."""
    if kind in ("compiled", "chunked"):
        return FisherMean(kind)
    if dtype in (torch.float32, torch.float64):
        return FisherMean("chunked")
    return FisherMean("compiled" if can_compile(device) else "chunked")


def fused_kernel(device: torch.device, dtype: torch.dtype, kind: str = "auto") -> FisherMean:
    """The pool's fused kernel (the engine's contract for
    :attr:`~search.engine.registry.MergeMethod.fused`)."""
    return choose_fisher_kernel(device, dtype, kind)
