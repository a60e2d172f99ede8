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

from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.calibration import CalibrationSection
from search.strategies.regmean.method import REGMEAN
from search.study.storage import sqlite_path
from search.study.strategy import Offers, Strategy, parse_settings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from search.calibration import Calibration
    from search.engine.pool import CheckpointPool
    from search.study.strategy import Scratch
    from search.study.worker import Runtime

SECTION = "merge.regmean"
SIGNATURE_KEY = "regmean"  # the search space signature's entry: the calibration's description


class RegMeanConfig(CalibrationSection):
    """``merge.regmean``: each checkpoint's Gram matrices are computed on this calibration data
    (one forward pass per example and checkpoint); the cache defaults to ``.regmean`` beside the
    study's SQLite file."""


class RegMeanCalibration(Strategy):
    """The RegMean strategy (see the module docstring)."""

    name = "regmean"

    def check(self) -> None:
        method = self.cfg.merge.method
        if self.section is None:
            raise ValueError(
                f"{SECTION}: method {method!r} needs calibration data: "
                "{data: FILE.txt|FILE.jsonl, examples: N} or {tasks: from_objectives}"
            )
        if method != REGMEAN.name:
            raise ValueError(f"{SECTION}: method {method!r} reads no Grams; remove {SECTION}")
        self.settings = parse_settings(RegMeanConfig, self.section, SECTION)
        self._calibration: Calibration | None = None

    def offers(self) -> Offers:
        return Offers(
            files=self.files,
            protected=self.protected,
            signature=self.signature,
            prepare_export=self.prepare_export,
        )

    def files(self) -> list[tuple[str, Path]]:
        data = self.settings.data
        return [(f"{SECTION}.data", data)] if data is not None else []

    def protected(self) -> list[tuple[str, Path]]:
        return [("the RegMean cache", self.cache_dir)]

    @property
    def calibration(self) -> Calibration:
        """The calibration examples (read once: bad data fails here, before any work)."""
        if self._calibration is None:
            from search.calibration import read_calibration

            cfg = self.cfg
            self._calibration = read_calibration(
                self.settings, cfg.objectives, cfg.eval_spec(), cfg.eval.seed, SECTION
            )
        return self._calibration

    @property
    def cache_dir(self) -> Path:
        """``merge.regmean.cache_dir``, else ``.regmean`` beside the study's SQLite file."""
        if self.settings.cache_dir is not None:
            return self.settings.cache_dir
        db = sqlite_path(self.cfg.storage)
        return (db.parent if db is not None else Path("studies")) / ".regmean"

    def signature(self) -> Mapping[str, Any]:
        return {SIGNATURE_KEY: self.calibration.describe()}

    def needs_precompute(self, new_study: bool) -> bool:
        return True  # fill the cache once, not in every worker

    def precompute(self, scratch: Scratch, new_study: bool) -> list[str]:
        done = self.load(scratch.pool, scratch.model, scratch.tokenizer)
        k = len(scratch.pool.names)
        return [
            f"RegMean Grams of {done.layers} linear layers for {k} checkpoints on "
            f"{len(self.calibration.examples)} examples ({self.calibration.label}): "
            f"{len(done.computed)} computed, {k - len(done.computed)} from the cache "
            f"{self.cache_dir}, in {done.seconds:.1f} s"
        ]

    def prepare_runtime(self, runtime: Runtime) -> None:
        self.load(runtime.pool, runtime.model, runtime.tokenizer)

    def prepare_export(self, pool: CheckpointPool) -> None:
        self.load(pool)

    def load(self, pool: CheckpointPool, model: Any = None, tokenizer: Any = None) -> Any:
        """Every checkpoint's Grams into ``pool``: from the cache, the missing ones computed."""
        from search.strategies.regmean.cache import load_grams

        return load_grams(pool, self.calibration, self.cache_dir, model, tokenizer)
