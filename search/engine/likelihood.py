"""The log-likelihood of token batches under the resident model (differentiable).

A batch is Hugging Face's triple ``(input_ids [B, T], attention_mask [B, T], labels [B, T])``
where ``labels`` is ``-100`` at every position that is not scored (the prompt, padding);
position ``t``'s label is predicted from the tokens before it. The strategies that learn from
calibration examples (Fisher, Frank-Wolfe) build their quantities on
:func:`sequence_log_likelihood`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from search.engine.dtypes import work_dtype

IGNORE = -100  # label of a position that is not scored (Hugging Face's convention)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, attention_mask, labels


def sequence_log_likelihood(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """``[B]``: Σ over each example's scored tokens of log p(token | tokens before it).

    In float32 (float64 for a float64 model); differentiable.
    """
    input_ids, attention_mask, labels = batch
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    logits = logits.to(work_dtype(logits.dtype))
    target = labels[:, 1:]
    scored = target != IGNORE
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * scored).sum(-1)
