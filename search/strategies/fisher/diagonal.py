"""Each checkpoint's diagonal empirical Fisher, one squared gradient per example.

``F = (1/N) Σ_n (∂ log p(x_n)/∂θ)²`` (Matena & Raffel's empirical Fisher; squaring per-batch
sums, as FusionBench does, is cheaper but another quantity), accumulated in float32, floored at
:data:`~search.strategies.fisher.merge.FISHER_FLOOR`. Pure computation on a model and batches of
one example each (:mod:`search.engine.likelihood`); which data, and caching, are
:mod:`.cache`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from search.engine.dtypes import work_dtype
from search.engine.likelihood import Batch, sequence_log_likelihood
from search.strategies.fisher.merge import FISHER_FLOOR


def diagonal_fisher(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    examples: Iterable[Batch],
    *,
    on_example: Callable[[], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher of the model as its weights are now.

    ``F_t = (1/N) Σ_n (∂ log p(x_n) / ∂θ_t)²`` for every tensor ``t`` of ``params``, with
    ``log p(x_n)`` the summed log-likelihood of example ``n``'s scored tokens.

    Args:
        model: the resident model (eval mode; its parameters require grad).
        params: tensor name -> the model's parameter
            (:func:`search.engine.materialize.model_parameters`).
        examples: batches of ONE example each (a squared gradient per example, not per batch).
        on_example: called after each example (a progress bar).

    Returns:
        tensor name -> float32 Fisher (float64 for a float64 model) on the parameter's device,
        floored at :data:`~.merge.FISHER_FLOOR`. Gradients are cleared after.
    """
    sums = {
        name: torch.zeros(p.shape, dtype=work_dtype(p.dtype), device=p.device)
        for name, p in params.items()
    }
    n = 0
    with torch.enable_grad():
        for batch in examples:
            if batch[0].shape[0] != 1:
                raise ValueError(
                    f"diagonal_fisher: expected one example per batch, got {batch[0].shape[0]}"
                )
            model.zero_grad(set_to_none=True)
            sequence_log_likelihood(model, batch).sum().backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name].add_(p.grad.to(sums[name].dtype).square())
            n += 1
            if on_example is not None:
                on_example()
    model.zero_grad(set_to_none=True)
    if n == 0:
        raise ValueError("diagonal_fisher: no examples")
    return {name: s.div_(n).clamp_min_(FISHER_FLOOR) for name, s in sums.items()}
