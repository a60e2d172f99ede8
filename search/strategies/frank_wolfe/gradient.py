"""The Frank-Wolfe proxy loss and its exact gradient in a linear merge's coefficients.

- :func:`mean_token_nll`: a weighted sum of mean token negative log-likelihoods, optionally
  back-propagated (the proxy loss of :mod:`.paths`);
- :func:`coefficient_gradient`: for a merge θ = Σ_i c_i θ_i, ``∂L/∂c_{i,g} = Σ_{t∈g}
  ⟨∂L/∂θ_t, θ_{i,t}⟩`` from the gradients one backward pass left on the model's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from search.engine.dtypes import work_dtype
from search.engine.layers import group_of
from search.engine.likelihood import IGNORE, Batch, sequence_log_likelihood
from search.engine.pool import CheckpointPool

_CHUNK = 1 << 20  # entries per block when a half-precision stack is up-cast for a dot product


def mean_token_nll(
    model: torch.nn.Module,
    parts: Sequence[tuple[float, Sequence[Batch]]],
    *,
    backward: bool,
) -> float:
    """``L = Σ_j a_j · (NLL of part j's scored tokens / their number)``.

    Args:
        parts: ``(a_j, batches_j)``; part ``j``'s loss is its mean token negative
            log-likelihood (all its batches together).
        backward: accumulate ``∂L/∂θ`` on the parameters' ``.grad`` (one backward per batch,
            scaled so that the sum is the gradient of ``L``); else no graph is built.

    Returns:
        ``L`` as a float.
    """
    total = 0.0
    context = torch.enable_grad() if backward else torch.no_grad()
    with context:
        for weight, batches in parts:
            tokens = sum(int((b[2][:, 1:] != IGNORE).sum()) for b in batches)
            if tokens == 0:
                raise ValueError("mean_token_nll: a part has no scored tokens")
            for batch in batches:
                loss = -sequence_log_likelihood(model, batch).sum() * (weight / tokens)
                if backward:
                    loss.backward()
                total += float(loss.detach())
    return total


def coefficient_gradient(
    pool: CheckpointPool, params: Mapping[str, torch.Tensor], n_groups: int
) -> torch.Tensor:
    """``[K, G]`` float64: ``∂L/∂c_{i,g} = Σ_{t in group g} ⟨∂L/∂θ_t, θ_{i,t}⟩``.

    For a merge ``θ_t = Σ_i c_{i,g(t)} θ_{i,t}`` this is the exact gradient in the coefficients,
    read from the ``.grad`` one backward pass left on ``params`` (the merged model's parameters,
    :func:`search.engine.materialize.model_parameters`) and the pool's stacks, one dot product
    per checkpoint and tensor. Tensors without a gradient contribute nothing.
    """
    k = len(pool.names)
    out = torch.zeros(k, n_groups, dtype=torch.float64)
    for name in pool.tensor_names:
        grad = params[name].grad
        if grad is None:
            continue
        stack = pool.stack(name).reshape(k, -1)
        work = work_dtype(stack.dtype)
        g = grad.reshape(-1).to(work)
        row = torch.zeros(k, dtype=work, device=stack.device)
        for start in range(0, g.numel(), _CHUNK):
            stop = min(g.numel(), start + _CHUNK)
            row += stack[:, start:stop].to(work) @ g[start:stop]
        out[:, group_of(name, n_groups, pool.n_layers)] += row.double().cpu()
    return out
