"""Weighted sums over stacked checkpoints: ``out = Σ_k c_k·X[k] (+ c_b·base)``.

The per-trial cost of a linear merge is memory traffic: read each of the K inputs once, write the
output once. Every kernel here accumulates in float32 (float64 for float64 inputs) and writes the
result straight into ``out`` (the resident model's parameter), so no second copy of the model is
made. Three implementations, picked once per pool by :func:`choose_kernel`:

- ``gemv``: float32/float64 storage. One ``torch.mv`` over the ``[K, N]`` view reads each input
  once (BLAS accumulates in the storage precision, i.e. float32 or better).
- ``compiled``: bfloat16/float16 storage. A ``torch.compile``-d loop, unrolled over K, that fuses
  the up-cast, the multiply-adds and the down-cast into one pass (Inductor's C++ kernel on the
  CPU, a Triton kernel on CUDA). Half-precision GEMV is no use here: on the CPU it is slow
  without native bf16 units, and its coefficients would be rounded to half precision.
- ``chunked``: the eager fallback for half precision: converts column blocks small enough to stay
  in cache to float32 and runs ``gemv`` on them.

A method that reads per-tensor extras may bring its own fused kernel
(:attr:`~search.engine.registry.MergeMethod.fused`), built once per pool, with the helpers
:func:`fused_or_eager` and :func:`can_compile`.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from functools import partial

import torch

KERNELS = ("auto", "gemv", "compiled", "chunked")
_CHUNK = 1 << 16  # columns per block for ``chunked``: K x 64 Ki float32 stays in L2/L3


def weighted_sum_unrolled(stack: torch.Tensor, coeffs: torch.Tensor, out: torch.Tensor) -> None:
    """``out = Σ_k coeffs[k]·stack[k]`` written as a loop that a compiler fuses into one pass."""
    acc = stack[0].float() * coeffs[0]
    for k in range(1, stack.shape[0]):
        acc = acc + stack[k].float() * coeffs[k]
    out.copy_(acc)


def weighted_sum_unrolled_base(
    stack: torch.Tensor, coeffs: torch.Tensor, base: torch.Tensor, out: torch.Tensor
) -> None:
    """Like :func:`weighted_sum_unrolled` plus ``coeffs[K]·base`` (the base's coefficient last)."""
    acc = base.float() * coeffs[stack.shape[0]]
    for k in range(stack.shape[0]):
        acc = acc + stack[k].float() * coeffs[k]
    out.copy_(acc)


def weighted_sum_gemv(
    stack: torch.Tensor, coeffs: torch.Tensor, out: torch.Tensor, base: torch.Tensor | None = None
) -> None:
    """One GEMV over the ``[K, N]`` view; ``coeffs`` has K entries (K + 1 with a base)."""
    k = stack.shape[0]
    x = stack.reshape(k, -1)
    c = coeffs.to(x.dtype)
    flat = out.view(-1) if out.is_contiguous() else None
    direct = flat is not None and flat.dtype == x.dtype
    result = flat if direct else torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
    torch.mv(x.t(), c[:k], out=result)
    if base is not None:
        result.add_(base.reshape(-1).to(result.dtype), alpha=float(c[k]))
    if not direct:  # another dtype (an export's): rounded once, after the base is added
        out.copy_(result.view(out.shape))


def weighted_sum_chunked(
    stack: torch.Tensor, coeffs: torch.Tensor, out: torch.Tensor, base: torch.Tensor | None = None
) -> None:
    """Column blocks up-cast to float32 in cache, then GEMV; for half-precision storage."""
    k = stack.shape[0]
    x = stack.reshape(k, -1)
    n = x.shape[1]
    rows = k + (base is not None)
    buf = torch.empty(rows, min(n, _CHUNK), dtype=torch.float32, device=x.device)
    acc = torch.empty(min(n, _CHUNK), dtype=torch.float32, device=x.device)
    c = coeffs.float()[:rows]
    flat_out = out.view(-1)
    flat_base = base.reshape(-1) if base is not None else None
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        width = stop - start
        buf[:k, :width].copy_(x[:, start:stop])
        if flat_base is not None:
            buf[k, :width].copy_(flat_base[start:stop])
        torch.mv(buf[:, :width].t(), c, out=acc[:width])
        flat_out[start:stop].copy_(acc[:width])


class WeightedSum:
    """The weighted-sum kernel of one pool: ``ws(out, stack, coeffs, base=None)``.

    ``coeffs`` is a float32 tensor on the pool's device with K entries, plus one for the base
    (last) when ``base`` is given. ``out`` must be contiguous.
    """

    def __init__(self, kind: str) -> None:
        if kind not in KERNELS[1:]:
            raise ValueError(f"kernel: expected one of {', '.join(KERNELS[1:])}, got {kind!r}")
        self.kind = kind
        self._compiled: tuple[Callable, Callable] | None = None

    def __call__(
        self,
        out: torch.Tensor,
        stack: torch.Tensor,
        coeffs: torch.Tensor,
        base: torch.Tensor | None = None,
    ) -> None:
        if self.kind == "gemv":
            weighted_sum_gemv(stack, coeffs, out, base)
        elif self.kind == "chunked" or not out.is_contiguous():
            weighted_sum_chunked(stack, coeffs, out, base)
        else:
            self._call_compiled(out, stack, coeffs, base)

    def _call_compiled(self, out, stack, coeffs, base) -> None:
        if self._compiled is None:
            self._compiled = (
                torch.compile(weighted_sum_unrolled, dynamic=True),
                torch.compile(weighted_sum_unrolled_base, dynamic=True),
            )
        plain, with_base = self._compiled
        # Flat aliases that are not views: guards on a view's ``_base`` would recompile the
        # kernel for every different rank of the underlying tensors.
        x = stack.detach().view(stack.shape[0], -1).detach()
        flat_out = out.detach().view(-1).detach()
        if base is None:
            fused = partial(plain, x, coeffs, flat_out)
        else:
            fused = partial(with_base, x, coeffs, base.detach().view(-1).detach(), flat_out)
        if not fused_or_eager(fused, "kernel"):
            self.kind = "chunked"
            weighted_sum_chunked(stack, coeffs, out, base)


def fused_or_eager(fused: Callable[[], None], what: str) -> bool:
    """Run a ``torch.compile``-d kernel call; ``False`` (with one warning) when no compiler or
    backend is available, so the caller switches to its eager kernel for good."""
    try:
        fused()
    except Exception as exc:  # noqa: BLE001 - a missing compiler or backend surfaces as anything
        warnings.warn(
            f"torch.compile {what} unavailable ({type(exc).__name__}: {exc}); "
            "falling back to the eager chunked kernel",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    return True


def can_compile(device: torch.device) -> bool:
    """``torch.compile`` needs a C++ compiler on the CPU (Triton on CUDA)."""
    return device.type == "cuda" or any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def choose_kernel(device: torch.device, dtype: torch.dtype, kind: str = "auto") -> WeightedSum:
    """The kernel for storage ``dtype`` on ``device``; ``auto`` picks as the module doc says."""
    if kind != "auto":
        return WeightedSum(kind)
    if dtype in (torch.float32, torch.float64):
        return WeightedSum("gemv")
    return WeightedSum("compiled" if can_compile(device) else "chunked")
