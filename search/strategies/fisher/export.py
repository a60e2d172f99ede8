"""What ``merge-search merge`` and an export need of Fisher merging: its YAML keys and files.

A ``fisher`` YAML names its calibration data under ``parameters: {fisher_data: FILE.txt|
FILE.jsonl, fisher_examples: N}`` (N = 256 by default); ``merge-search merge`` computes the
Fishers from it, uncached. An exported Fisher merge holds its calibration examples,
``fisher_calibration.jsonl``, which its YAML names, and the card records the data and N.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search.engine.extras import ExtrasExport, MethodExtension
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.strategies.fisher.method import EXTRAS

DATA, EXAMPLES = "fisher_data", "fisher_examples"
DEFAULT_EXAMPLES = 256
CALIBRATION_FILE = "fisher_calibration.jsonl"


class FisherExtension(MethodExtension):
    """The ``fisher`` method's extension keys, its Fishers for a merge, and what it exports."""

    keys = (DATA, EXAMPLES)
    data_key = DATA

    def parse(self, file: Path, method: str, given: dict[str, Any]) -> dict[str, Any]:
        taken = {key: given.pop(key) for key in self.keys if key in given}
        if DATA not in taken:
            raise UserError(
                f"{file}: parameters.{DATA}: required for merge_method {method} "
                "(the Fishers' calibration data: a .txt or .jsonl file)"
            )
        n = taken.get(EXAMPLES, DEFAULT_EXAMPLES)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"{file}: parameters.{EXAMPLES}: expected an integer >= 1 (got {n!r})")
        return {DATA: Path(str(taken[DATA])), EXAMPLES: n}

    def inputs(self, settings: Mapping[str, Any]) -> list[tuple[str, Path]]:
        return [("the Fisher calibration data", settings[DATA])]

    def load(self, pool: CheckpointPool, settings: Mapping[str, Any]) -> None:
        from search.strategies.fisher.cache import fishers_from_file

        fishers_from_file(pool, settings[DATA], settings[EXAMPLES])

    def export(self, pool: CheckpointPool, target: Path) -> ExtrasExport:
        held = pool.extras(EXTRAS)
        info = held.info if held is not None else {}
        records = info.get("records") or ()
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        return ExtrasExport(
            # the calibration examples are written beside the merge: N is how many there are
            parameters={DATA: str(target / CALIBRATION_FILE), EXAMPLES: len(records)},
            card={
                "Fisher calibration": {
                    **(info.get("source") or {}),
                    "examples file": CALIBRATION_FILE,
                    "note": "each checkpoint's diagonal Fisher, (1/N) Σ_n (∂ log p(x_n)/∂θ)², one "
                    "squared gradient per example, floored at 1e-6",
                }
            },
            files={CALIBRATION_FILE: "".join(f"{x}\n" for x in lines)},
        )
