"""RegMean (Jin et al. 2023): each linear layer merged by least squares on its inputs.

- :mod:`.method`: the ``regmean`` merge method's declaration (the registry names it);
  :mod:`.merge`: its tensor math, pure functions; :mod:`.gram`: each linear layer's Gram matrix
  of its inputs, from forward hooks; :mod:`.cache`: computed once per checkpoint and calibration
  data, cached on disk, held by the pool as its per-tensor extras of kind ``gram``
  (:mod:`search.engine.extras`); :mod:`.export`: its ``merge-search merge`` keys and what an
  export keeps.
- :class:`RegMeanCalibration`, a strategy of the study loop (:mod:`search.study.strategy`),
  checks the ``merge.regmean`` section, reads the calibration examples (a file, or the
  objectives' search-split examples), puts their description into the study's signature (other
  Grams are another merge), fills the cache once before the workers start, and loads the Grams
  into each worker's pool and into an export's. ``alpha`` is a parameter of the method
  (``merge.params.alpha``: a value in [0, 1] or a searched ``{low, high}``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.calibration import CalibrationSection
from search.strategies.calibrated import CalibratedExtras
from search.strategies.regmean.method import REGMEAN

if TYPE_CHECKING:
    from search.engine.pool import CheckpointPool

SECTION = "merge.regmean"


class RegMeanConfig(CalibrationSection):
    """``merge.regmean``: each checkpoint's Gram matrices are computed on this calibration data
    (one forward pass per example and checkpoint); the cache defaults to ``.regmean`` beside the
    study's SQLite file."""


class RegMeanCalibration(CalibratedExtras):
    """The RegMean strategy (see the module docstring and :class:`CalibratedExtras`)."""

    name = "regmean"
    path = SECTION
    method = REGMEAN.name
    settings_type = RegMeanConfig
    statistic = "Grams"
    label = "RegMean"

    def load(self, pool: CheckpointPool, model: Any = None, tokenizer: Any = None) -> Any:
        from search.strategies.regmean.cache import load_grams

        return load_grams(pool, self.calibration, self.cache_dir, model, tokenizer)

    def loaded(self, done: Any, k: int) -> str:
        return (
            f"RegMean Grams of {done.layers} linear layers for {k} checkpoints on "
            f"{len(self.calibration.examples)} examples ({self.calibration.label}): "
            f"{len(done.computed)} computed, {k - len(done.computed)} from the cache "
            f"{self.cache_dir}, in {done.seconds:.1f} s"
        )
