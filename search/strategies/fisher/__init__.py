"""Fisher merging: each checkpoint's diagonal Fisher, cached on disk, and the ``fisher`` method.

- :mod:`.method`: the ``fisher`` merge method's declaration (the registry lists it);
  :mod:`.merge`: its tensor math and fused kernel; :mod:`.diagonal`: the Fisher itself;
  :mod:`.cache`: computed once per checkpoint and calibration data, cached on disk, held by the
  pool as its per-tensor extras of kind ``fisher`` (:mod:`search.engine.extras`).
- :class:`FisherCalibration`, a strategy of the study loop (:mod:`search.study.strategy`),
  checks the ``merge.fisher`` section, reads the calibration examples (a file, or the
  objectives' search-split examples), puts their description into the study's signature (other
  Fishers are another merge), fills the cache once before the workers start, and loads the
  Fishers into each worker's pool and into an export's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.calibration import CalibrationSection
from search.strategies.calibrated import CalibratedExtras
from search.strategies.fisher.method import FISHER

if TYPE_CHECKING:
    from search.engine.pool import CheckpointPool

SECTION = "merge.fisher"


class FisherConfig(CalibrationSection):
    """``merge.fisher``: each checkpoint's Fisher is computed on this calibration data (one
    backward pass per example and checkpoint); the cache defaults to ``.fisher`` beside the
    study's SQLite file."""


class FisherCalibration(CalibratedExtras):
    """The Fisher strategy (see the module docstring and :class:`CalibratedExtras`)."""

    name = "fisher"
    path = SECTION
    method = FISHER.name
    settings_type = FisherConfig
    statistic = "Fishers"
    label = "Fisher"

    def load(self, pool: CheckpointPool, model: Any = None, tokenizer: Any = None) -> Any:
        from search.strategies.fisher.cache import load_fishers

        return load_fishers(pool, self.calibration, self.cache_dir, model, tokenizer)

    def loaded(self, done: Any, k: int) -> str:
        return (
            f"Fishers of {k} checkpoints on {len(self.calibration.examples)} examples "
            f"({self.calibration.label}): {len(done.computed)} computed "
            f"({done.backward_passes} backward passes), {k - len(done.computed)} from the cache "
            f"{self.cache_dir}, in {done.seconds:.1f} s"
        )
