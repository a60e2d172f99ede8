"""What ``merge-search merge`` and an export need of RegMean: its YAML keys and files.

A ``regmean`` YAML names its calibration data under ``parameters: {regmean_data: FILE.txt|
FILE.jsonl, regmean_examples: N}`` (N = 256 by default) beside ``alpha``; ``merge-search merge``
computes the Grams from it, uncached. An exported RegMean merge holds its calibration examples,
``regmean_calibration.jsonl``, which its YAML names, and the card records the data and N
(:class:`~search.strategies.calibrated.CalibratedExtension`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.strategies.calibrated import CalibratedExtension
from search.strategies.regmean.method import EXTRAS

if TYPE_CHECKING:
    from pathlib import Path

    from search.engine.pool import CheckpointPool


class RegMeanExtension(CalibratedExtension):
    """The ``regmean`` method's extension keys, its Grams for a merge, and what it exports."""

    prefix = "regmean"
    kind = EXTRAS
    what = "the Gram matrices'"
    label = "RegMean"
    note = (
        "each linear layer of the transformer blocks merged as W = (Σ w_i G_i)⁻¹ Σ w_i G_i W_i, "
        "G_i the Gram matrix of checkpoint i's inputs to the layer on these examples "
        "(off-diagonal entries × alpha); other tensors are the weighted mean"
    )

    def compute(self, pool: CheckpointPool, path: Path, n: int) -> None:
        from search.strategies.regmean.cache import grams_from_file

        grams_from_file(pool, path, n)
