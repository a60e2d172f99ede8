"""Training the demo pool: batches from a skill mixture and one plain AdamW loop.

The loss covers the answer tokens only (prompts are random programs and words: nothing to
learn there), like supervised fine-tuning. A run is reproducible from its seed: the data order
comes from :class:`random.Random` streams and the model from ``torch.manual_seed``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

from search.zoo.model import encode
from search.zoo.skills import SKILLS, training_stream

IGNORE = -100  # label value cross-entropy skips


def mixture_texts(
    code_share: float,
    seed: int,
    exclude: set[str],
    fixed_examples: int | None = None,
    skill: str | None = None,
) -> Iterator[str]:
    """Endless training texts: each is a code example with probability ``code_share``.

    With ``fixed_examples`` the stream cycles over that many texts (a small data set seen
    many times: the over-trained run). With ``skill`` (a key of
    :data:`~search.zoo.skills.GENERATORS`) every text is of that skill instead.
    """
    streams = {s: training_stream(s, seed, exclude) for s in ((skill,) if skill else SKILLS)}
    pick = random.Random(f"mixture:{seed}")

    def draw() -> Iterator[str]:
        while True:
            if skill:
                yield next(streams[skill])
            else:
                yield next(streams["code" if pick.random() < code_share else "instruct"])

    if fixed_examples is None:
        yield from draw()
        return
    pool = list(islice(draw(), fixed_examples))
    order = random.Random(f"epochs:{seed}")
    while True:
        order.shuffle(pool)
        yield from pool


def batches(texts: Iterator[str], batch_size: int) -> Iterator[tuple[Any, Any]]:
    """``(input_ids, labels)`` tensors, right-padded; labels only on the answer and newline."""
    import torch

    while True:
        chunk = list(islice(texts, batch_size))
        ids = [encode(t) for t in chunk]
        width = max(map(len, ids))
        x = torch.zeros(len(ids), width, dtype=torch.long)
        y = torch.full((len(ids), width), IGNORE, dtype=torch.long)
        for row, (text, seq) in enumerate(zip(chunk, ids, strict=False)):
            x[row, : len(seq)] = torch.tensor(seq)
            start = text.index("?") + 2  # <s> shifts positions by one; the answer follows "?"
            y[row, start : len(seq)] = x[row, start : len(seq)]
        yield x, y


def train(
    model: Any,
    data: Iterator[tuple[Any, Any]],
    steps: int,
    lr: float,
    warmup: float = 0.05,
    anneal: bool = True,
    on_step: Callable[[float], None] | None = None,
    save_at: Sequence[int] = (),
    on_checkpoint: Callable[[int], None] | None = None,
) -> float:
    """AdamW with linear warm-up and cosine decay to zero; returns the last loss.

    Args:
        model: a causal LM (trained in place, left in eval mode).
        data: ``(input_ids, labels)`` batches.
        steps: optimizer steps.
        lr: peak learning rate.
        warmup: fraction of steps spent warming up.
        anneal: decay the rate to zero (cosine); ``False`` stops at the peak rate, like a
            checkpoint taken in the middle of a run.
        on_step: called with the loss after every step (progress bars).
        save_at: steps (1-based) after which ``on_checkpoint(step)`` is called, the model in
            eval mode (a checkpoint taken along the run).
    """
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, int(warmup * steps))

    def schedule(step: int) -> float:
        decay = 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)) if anneal else 1.0
        return min(1.0, (step + 1) / warm) * decay

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    loss_value = float("nan")
    for step in range(1, steps + 1):
        x, y = next(data)
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(loss_value)
        if on_checkpoint is not None and step in save_at:
            model.eval()
            on_checkpoint(step)
            model.train()
    model.eval()
    return loss_value
