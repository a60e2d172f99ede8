"""Layer grouping: which transformer block a tensor belongs to, and its layer group.

A plan may give each checkpoint one weight per layer group (``layer_groups`` in a study):
the blocks are split into contiguous groups; embeddings go with the first group, everything else
outside the blocks (final norm, ``lm_head``) with the last.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Transformer blocks: "model.layers.3.", "transformer.h.3.", "blocks.3." ...
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
EMBED_RE = re.compile(r"embed|(?:^|\.)(?:wte|wpe)\.")


def block_of(name: str) -> int | None:
    """The transformer block of tensor ``name`` (``None`` outside the blocks)."""
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def count_layers(names: Iterable[str]) -> int:
    """The number of transformer blocks the tensor ``names`` span (0: none found)."""
    blocks = [b for n in names if (b := block_of(n)) is not None]
    return max(blocks) + 1 if blocks else 0


def group_of(name: str, n_groups: int, n_layers: int) -> int:
    """Layer group of tensor ``name`` when ``n_layers`` blocks are split into ``n_groups``.

    Block ``i`` of ``L`` goes to group ``i·G // L`` (contiguous, sizes differ by at most one);
    embeddings go with group 0; everything else outside the blocks (final norm, lm_head) with
    group ``G − 1``.
    """
    if n_groups <= 1:
        return 0
    block = block_of(name)
    if block is not None:
        return block * n_groups // n_layers
    return 0 if EMBED_RE.search(name) else n_groups - 1
