"""What ``merge-search merge`` and an export need of Fisher merging: its YAML keys and files.

A ``fisher`` YAML names its calibration data under ``parameters: {fisher_data: FILE.txt|
FILE.jsonl, fisher_examples: N}`` (N = 256 by default); ``merge-search merge`` computes the
Fishers from it, uncached. An exported Fisher merge holds its calibration examples,
``fisher_calibration.jsonl``, which its YAML names, and the card records the data and N
(:class:`~search.strategies.calibrated.CalibratedExtension`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.strategies.calibrated import CalibratedExtension
from search.strategies.fisher.method import EXTRAS

if TYPE_CHECKING:
    from pathlib import Path

    from search.engine.pool import CheckpointPool


class FisherExtension(CalibratedExtension):
    """The ``fisher`` method's extension keys, its Fishers for a merge, and what it exports."""

    prefix = "fisher"
    kind = EXTRAS
    what = "the Fishers'"
    label = "Fisher"
    note = (
        "each checkpoint's diagonal Fisher, (1/N) Σ_n (∂ log p(x_n)/∂θ)², one squared gradient "
        "per example, floored at 1e-6"
    )

    def compute(self, pool: CheckpointPool, path: Path, n: int) -> None:
        from search.strategies.fisher.cache import fishers_from_file

        fishers_from_file(pool, path, n)
