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

from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.calibration import CalibrationSection
from search.strategies.fisher.method import FISHER
from search.study.storage import sqlite_path
from search.study.strategy import Offers, Strategy, parse_settings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from search.calibration import Calibration
    from search.engine.pool import CheckpointPool
    from search.study.strategy import Scratch
    from search.study.worker import Runtime

SECTION = "merge.fisher"
SIGNATURE_KEY = "fisher"  # the search space signature's entry: the calibration's description


class FisherConfig(CalibrationSection):
    """``merge.fisher``: each checkpoint's Fisher is computed on this calibration data (one
    backward pass per example and checkpoint); the cache defaults to ``.fisher`` beside the
    study's SQLite file."""


class FisherCalibration(Strategy):
    """The Fisher strategy (see the module docstring)."""

    name = "fisher"

    def check(self) -> None:
        method = self.cfg.merge.method
        if self.section is None:
            raise ValueError(
                f"{SECTION}: method {method!r} needs calibration data: "
                "{data: FILE.txt|FILE.jsonl, examples: N} or {tasks: from_objectives}"
            )
        if method != FISHER.name:
            raise ValueError(f"{SECTION}: method {method!r} reads no Fishers; remove {SECTION}")
        self.settings = parse_settings(FisherConfig, self.section, SECTION)
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
        return [("merge.fisher.data", data)] if data is not None else []

    def protected(self) -> list[tuple[str, Path]]:
        return [("the Fisher cache", self.cache_dir)]

    @property
    def calibration(self) -> Calibration:
        """The calibration examples (read once: bad data fails here, before any work)."""
        if self._calibration is None:
            self._calibration = self._read_calibration()
        return self._calibration

    def _read_calibration(self) -> Calibration:
        from search.calibration import read_calibration

        cfg = self.cfg
        return read_calibration(
            self.settings, cfg.objectives, cfg.eval_spec(), cfg.eval.seed, SECTION
        )

    @property
    def cache_dir(self) -> Path:
        """``merge.fisher.cache_dir``, else ``.fisher`` beside the study's SQLite file."""
        if self.settings.cache_dir is not None:
            return self.settings.cache_dir
        db = sqlite_path(self.cfg.storage)
        return (db.parent if db is not None else Path("studies")) / ".fisher"

    def signature(self) -> Mapping[str, Any]:
        return {SIGNATURE_KEY: self.calibration.describe()}

    def needs_precompute(self, new_study: bool) -> bool:
        return True  # fill the cache once, not in every worker

    def precompute(self, scratch: Scratch, new_study: bool) -> list[str]:
        done = self.load(scratch.pool, scratch.model, scratch.tokenizer)
        k = len(scratch.pool.names)
        return [
            f"Fishers of {k} checkpoints on {len(self.calibration.examples)} examples "
            f"({self.calibration.label}): {len(done.computed)} computed "
            f"({done.backward_passes} backward passes), {k - len(done.computed)} from the cache "
            f"{self.cache_dir}, in {done.seconds:.1f} s"
        ]

    def prepare_runtime(self, runtime: Runtime) -> None:
        self.load(runtime.pool, runtime.model, runtime.tokenizer)

    def prepare_export(self, pool: CheckpointPool) -> None:
        self.load(pool)

    def load(self, pool: CheckpointPool, model: Any = None, tokenizer: Any = None) -> Any:
        """Every checkpoint's Fisher into ``pool``: from the cache, the missing ones computed."""
        from search.strategies.fisher.cache import load_fishers

        return load_fishers(pool, self.calibration, self.cache_dir, model, tokenizer)
