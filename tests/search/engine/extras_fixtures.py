"""Per-tensor extras for any method that reads them, made as ``merge-search merge`` makes them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from search.engine.pool import CheckpointPool
from search.engine.registry import MergeMethod

CALIBRATION = "the cat sat on the mat.\na+b=c.\n1+2=3\n"  # three short texts


def hold_extras(pool: CheckpointPool, method: MergeMethod) -> CheckpointPool:
    """``pool`` holding what ``method`` reads beside the weights (nothing for most methods):
    computed from :data:`CALIBRATION` through the method's extension, as a YAML with only its
    calibration data would make them (uncached)."""
    if not method.extras:
        return pool
    ext = method.extension_impl
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "calibration.txt"
        data.write_text(CALIBRATION)
        ext.load(pool, ext.parse(data, method.name, {ext.data_key: str(data)}))
    return pool
