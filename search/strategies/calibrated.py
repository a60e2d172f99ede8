"""What the strategies that compute a statistic of each checkpoint on calibration data share
(Fisher merging's diagonal Fishers, RegMean's Gram matrices); each keeps its own math, its
cache's file name and its lines in its folder.

- :class:`CalibratedExtras`: the study side. It checks the method's config section (a
  :class:`~search.calibration.CalibrationSection`), reads the calibration examples once (a
  file, or the objectives' search-split examples), puts their description into the study's
  signature (other statistics are another merge), names its data file and its cache (an export
  never replaces it), fills the cache once before the workers start and loads the statistics
  into each worker's pool and into an export's.
- :class:`CalibratedExtension`: ``merge-search merge`` and an export. A YAML names the data
  under ``parameters: {<prefix>_data: FILE.txt|FILE.jsonl, <prefix>_examples: N}`` (N = 256 by
  default); an exported merge holds its calibration examples, ``<prefix>_calibration.jsonl``,
  which its YAML names, and its card records the data and N.
- The cache on disk: one folder per checkpoint, ``<cache_dir>/<key>/`` with the statistic's
  safetensors file and ``meta.json``. :func:`cache_key` hashes the checkpoint's fingerprint, the
  data's digest, N and the dtype the model ran in, so a resumed study, another worker and an
  export find the entry and a changed checkpoint gets a new key; :func:`write_entry` writes a
  folder beside its final name and renames it into place, so a crash leaves no half-written
  entry.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from search.engine.extras import ExtrasExport, MethodExtension
from search.errors import UserError
from search.study.storage import sqlite_path
from search.study.strategy import Offers, Strategy, parse_settings

if TYPE_CHECKING:
    import torch

    from search.calibration import Calibration, CalibrationSection
    from search.engine.pool import CheckpointPool
    from search.study.strategy import Scratch
    from search.study.worker import Runtime

META_FILE = "meta.json"
DEFAULT_EXAMPLES = 256  # a merge YAML's calibration examples when it names none


class CalibratedExtras(Strategy):
    """A strategy whose merge method reads a statistic of each checkpoint on calibration data.

    A subclass sets the class attributes and :meth:`load` (read from the cache, compute what is
    missing) and :meth:`loaded` (the precompute's line); its ``name`` is the signature's key
    and the default cache folder, ``.<name>`` beside the study's SQLite file.
    """

    path: ClassVar[str]  # the config section, e.g. "merge.fisher"
    method: ClassVar[str]  # the merge method that reads the statistic
    settings_type: ClassVar[type[CalibrationSection]]
    statistic: ClassVar[str]  # what it computes, plural: "Fishers", "Grams"
    label: ClassVar[str]  # its short name in lines: "Fisher", "RegMean"

    def check(self) -> None:
        method = self.cfg.merge.method
        if self.section is None:
            raise ValueError(
                f"{self.path}: method {method!r} needs calibration data: "
                "{data: FILE.txt|FILE.jsonl, examples: N} or {tasks: from_objectives}"
            )
        if method != self.method:
            raise ValueError(
                f"{self.path}: method {method!r} reads no {self.statistic}; remove {self.path}"
            )
        self.settings = parse_settings(self.settings_type, self.section, self.path)
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
        return [(f"{self.path}.data", data)] if data is not None else []

    def protected(self) -> list[tuple[str, Path]]:
        return [(f"the {self.label} cache", self.cache_dir)]

    @property
    def calibration(self) -> Calibration:
        """The calibration examples (read once: bad data fails here, before any work)."""
        if self._calibration is None:
            from search.calibration import read_calibration

            cfg = self.cfg
            self._calibration = read_calibration(
                self.settings, cfg.objectives, cfg.eval_spec(), cfg.eval.seed, self.path
            )
        return self._calibration

    @property
    def cache_dir(self) -> Path:
        """``<section>.cache_dir``, else ``.<name>`` beside the study's SQLite file."""
        if self.settings.cache_dir is not None:
            return self.settings.cache_dir
        db = sqlite_path(self.cfg.storage)
        return (db.parent if db is not None else Path("studies")) / f".{self.name}"

    def signature(self) -> Mapping[str, Any]:
        return {self.name: self.calibration.describe()}

    def needs_precompute(self, new_study: bool) -> bool:
        return True  # fill the cache once, not in every worker

    def precompute(self, scratch: Scratch, new_study: bool) -> list[str]:
        done = self.load(scratch.pool, scratch.model, scratch.tokenizer)
        return [self.loaded(done, len(scratch.pool.names))]

    def prepare_runtime(self, runtime: Runtime) -> None:
        self.load(runtime.pool, runtime.model, runtime.tokenizer)

    def prepare_export(self, pool: CheckpointPool) -> None:
        self.load(pool)

    def load(self, pool: CheckpointPool, model: Any = None, tokenizer: Any = None) -> Any:
        """Every checkpoint's statistic into ``pool``: from the cache, the missing computed."""
        raise NotImplementedError

    def loaded(self, done: Any, k: int) -> str:
        """The precompute's line, of what :meth:`load` returned for ``k`` checkpoints."""
        raise NotImplementedError


class CalibratedExtension(MethodExtension):
    """A method's ``merge-search merge`` keys for its calibration data and what an export keeps
    of it. A subclass sets the class attributes and :meth:`compute`."""

    prefix: ClassVar[str]  # the keys' prefix: "<prefix>_data", "<prefix>_examples"
    kind: ClassVar[str]  # the pool's extras it exports (search.engine.extras)
    what: ClassVar[str]  # the statistic, for the missing-data line: "the Fishers'"
    label: ClassVar[str]  # its short name: "Fisher", "RegMean"
    note: ClassVar[str]  # the model card's note on what was computed

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.keys = (f"{cls.prefix}_data", f"{cls.prefix}_examples")
        cls.data_key = cls.keys[0]

    def parse(self, file: Path, method: str, given: dict[str, Any]) -> dict[str, Any]:
        data, examples = self.keys
        taken = {key: given.pop(key) for key in self.keys if key in given}
        if data not in taken:
            raise UserError(
                f"{file}: parameters.{data}: required for merge_method {method} "
                f"({self.what} calibration data: a .txt or .jsonl file)"
            )
        n = taken.get(examples, DEFAULT_EXAMPLES)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"{file}: parameters.{examples}: expected an integer >= 1 (got {n!r})")
        return {data: Path(str(taken[data])), examples: n}

    def inputs(self, settings: Mapping[str, Any]) -> list[tuple[str, Path]]:
        return [(f"the {self.label} calibration data", settings[self.keys[0]])]

    def load(self, pool: CheckpointPool, settings: Mapping[str, Any]) -> None:
        data, examples = self.keys
        self.compute(pool, settings[data], settings[examples])

    def compute(self, pool: CheckpointPool, path: Path, n: int) -> None:
        """Compute the statistic of ``pool``'s checkpoints on the first ``n`` examples of the
        file ``path`` and hold it in the pool, uncached (no study to put a cache beside)."""
        raise NotImplementedError

    def export(self, pool: CheckpointPool, target: Path) -> ExtrasExport:
        held = pool.extras(self.kind)
        info = held.info if held is not None else {}
        records = info.get("records") or ()
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        examples_file = f"{self.prefix}_calibration.jsonl"
        return ExtrasExport(
            # the calibration examples are written beside the merge: N is how many there are
            parameters={self.keys[0]: str(target / examples_file), self.keys[1]: len(records)},
            card={
                f"{self.label} calibration": {
                    **(info.get("source") or {}),
                    "examples file": examples_file,
                    "note": self.note,
                }
            },
            files={examples_file: "".join(f"{x}\n" for x in lines)},
        )


def cache_key(
    fingerprint: Mapping[str, Any],
    data: Calibration,
    dtype: torch.dtype,
    version: int,
    **also: str,
) -> str:
    """The cache folder name of one checkpoint's statistic on ``data`` (``also``: more that
    tells entries apart, e.g. the statistic's kind)."""
    payload = {
        "version": version,
        **also,
        "checkpoint": dict(fingerprint),
        **data.describe(),
        "dtype": str(dtype).removeprefix("torch."),
    }
    del payload["data"]  # the label: the same examples from another path share the entry
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def write_entry(
    folder: Path,
    key: str,
    file_name: str,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> None:
    """Write one cache entry, ``folder/key/{file_name, meta.json}``, whole or not at all: into
    a folder beside its final name, renamed into place (an entry another worker wrote meanwhile
    is kept)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=folder))
    try:
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp / file_name))
        (tmp / META_FILE).write_text(json.dumps(dict(meta), indent=2) + "\n")
        try:
            tmp.rename(folder / key)
        except OSError:  # another worker wrote the same entry meanwhile: keep theirs
            if not (folder / key / file_name).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def entry_meta(
    fingerprint: Mapping[str, Any], data: Calibration, dtype: torch.dtype, version: int
) -> dict[str, Any]:
    """What ``meta.json`` records of an entry."""
    return {
        "checkpoint": dict(fingerprint),
        **data.describe(),
        "dtype": str(dtype).removeprefix("torch."),
        "version": version,
    }


def progress_bar(total: int, enabled: bool) -> Any:
    """A progress bar over the examples a statistic is computed on."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="example", disable=not enabled, leave=False)
