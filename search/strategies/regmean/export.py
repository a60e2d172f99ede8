"""What ``merge-search merge`` and an export need of RegMean: its YAML keys and files.

A ``regmean`` YAML names its calibration data under ``parameters: {regmean_data: FILE.txt|
FILE.jsonl, regmean_examples: N}`` (N = 256 by default) beside ``alpha``; ``merge-search merge``
computes the Grams from it, uncached. An exported RegMean merge holds its calibration examples,
``regmean_calibration.jsonl``, which its YAML names, and the card records the data and N.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search.engine.extras import ExtrasExport, MethodExtension
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.strategies.regmean.method import EXTRAS

DATA, EXAMPLES = "regmean_data", "regmean_examples"
DEFAULT_EXAMPLES = 256
CALIBRATION_FILE = "regmean_calibration.jsonl"


class RegMeanExtension(MethodExtension):
    """The ``regmean`` method's extension keys, its Grams for a merge, and what it exports."""

    keys = (DATA, EXAMPLES)
    data_key = DATA

    def parse(self, file: Path, method: str, given: dict[str, Any]) -> dict[str, Any]:
        taken = {key: given.pop(key) for key in self.keys if key in given}
        if DATA not in taken:
            raise UserError(
                f"{file}: parameters.{DATA}: required for merge_method {method} "
                "(the Gram matrices' calibration data: a .txt or .jsonl file)"
            )
        n = taken.get(EXAMPLES, DEFAULT_EXAMPLES)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"{file}: parameters.{EXAMPLES}: expected an integer >= 1 (got {n!r})")
        return {DATA: Path(str(taken[DATA])), EXAMPLES: n}

    def inputs(self, settings: Mapping[str, Any]) -> list[tuple[str, Path]]:
        return [("the RegMean calibration data", settings[DATA])]

    def load(self, pool: CheckpointPool, settings: Mapping[str, Any]) -> None:
        from search.strategies.regmean.cache import grams_from_file

        grams_from_file(pool, settings[DATA], settings[EXAMPLES])

    def export(self, pool: CheckpointPool, target: Path) -> ExtrasExport:
        held = pool.extras(EXTRAS)
        info = held.info if held is not None else {}
        records = info.get("records") or ()
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        return ExtrasExport(
            # the calibration examples are written beside the merge: N is how many there are
            parameters={DATA: str(target / CALIBRATION_FILE), EXAMPLES: len(records)},
            card={
                "RegMean calibration": {
                    **(info.get("source") or {}),
                    "examples file": CALIBRATION_FILE,
                    "note": "each linear layer of the transformer blocks merged as "
                    "W = (Σ w_i G_i)⁻¹ Σ w_i G_i W_i, G_i the Gram matrix of checkpoint i's inputs "
                    "to the layer on these examples (off-diagonal entries × alpha); other tensors "
                    "are the weighted mean",
                }
            },
            files={CALIBRATION_FILE: "".join(f"{x}\n" for x in lines)},
        )
