"""Data-informed quantities of the resident model: per-example Fishers and proxy-loss gradients.

Pure computation on a model and token batches; which data, and caching, belong to the study
(:mod:`search.fisher.cache`, :mod:`search.study.frank_wolfe`). A batch is Hugging Face's triple
``(input_ids [B, T], attention_mask [B, T], labels [B, T])`` where ``labels`` is ``-100`` at every
position that is not scored (the prompt, padding); position ``t``'s label is predicted from the
tokens before it.

- :func:`sequence_log_likelihood`: the summed log-likelihood of each example's scored tokens;
- :func:`diagonal_fisher`: ``F = (1/N) Σ_n (∂ log p(x_n)/∂θ)²``, one backward pass and one
  squared gradient per example (Matena & Raffel's empirical Fisher; squaring per-batch sums, as
  FusionBench does, is cheaper but another quantity), accumulated in float32, floored at
  :data:`~search.engine.methods.FISHER_FLOOR`;
- :func:`mean_token_nll`: a weighted sum of mean token negative log-likelihoods, optionally
  back-propagated (the Frank-Wolfe proxy loss);
- :func:`coefficient_gradient`: for a merge θ = Σ_i c_i θ_i, ``∂L/∂c_{i,g} = Σ_{t∈g}
  ⟨∂L/∂θ_t, θ_{i,t}⟩`` from the gradients one backward pass left on the model's parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from search.engine.methods import FISHER_FLOOR
from search.engine.pool import CheckpointPool

IGNORE = -100  # label of a position that is not scored (Hugging Face's convention)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, attention_mask, labels
_CHUNK = 1 << 20  # entries per block when a half-precision stack is up-cast for a dot product


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def sequence_log_likelihood(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """``[B]``: Σ over each example's scored tokens of log p(token | tokens before it).

    In float32 (float64 for a float64 model); differentiable.
    """
    input_ids, attention_mask, labels = batch
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    logits = logits.to(_work_dtype(logits.dtype))
    target = labels[:, 1:]
    scored = target != IGNORE
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * scored).sum(-1)


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
        floored at :data:`~search.engine.methods.FISHER_FLOOR`. Gradients are cleared after.
    """
    sums = {
        name: torch.zeros(p.shape, dtype=_work_dtype(p.dtype), device=p.device)
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
        work = _work_dtype(stack.dtype)
        g = grad.reshape(-1).to(work)
        row = torch.zeros(k, dtype=work, device=stack.device)
        for start in range(0, g.numel(), _CHUNK):
            stop = min(g.numel(), start + _CHUNK)
            row += stack[:, start:stop].to(work) @ g[start:stop]
        out[:, pool.group_of(name, n_groups)] += row.double().cpu()
    return out
