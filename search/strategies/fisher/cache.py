"""Each checkpoint's diagonal Fisher: computed once on the calibration data, cached on disk.

Used by a study's ``merge.fisher`` (:mod:`search.strategies.fisher`), by ``merge-search merge`` and
by an export. Dependencies: :mod:`search.engine` and :mod:`evaluators` only.

- the calibration examples and their digest: :class:`search.calibration.Calibration`, read from
  a ``.txt``/``.jsonl`` file (:func:`~search.calibration.calibration_from_file`) or a study's
  objectives.
- :func:`load_fishers`: every checkpoint's Fisher into the pool, the missing ones computed with
  :func:`.diagonal.diagonal_fisher` (one backward pass per example and checkpoint, K × N in all,
  with a progress bar) and cached, then all read from the cache's files by a store of the pool's
  placement (the pool's per-tensor extras, :mod:`search.engine.extras`:
  ``device``/``host`` resident like the checkpoints, ``disk`` memory-mapped); without a cache
  folder they stay on the device (:func:`hold_fishers`).

The cache: one folder per checkpoint, ``<cache_dir>/<key>/`` with ``fisher.safetensors`` (float32,
one tensor per pool tensor) and ``meta.json``. The key hashes the checkpoint's fingerprint
(:meth:`~search.engine.pool.Checkpoint.fingerprint`), the data's digest, N and the dtype the model
ran in, so a resumed study, another worker and an export find the Fishers, and a changed
checkpoint gets a new key and is recomputed. A folder is written beside its final name and
renamed into place, so a crash leaves no half-written entry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evaluators.perplexity import context_length
from search.calibration import Calibration, batches, calibration_from_file, tokenize
from search.engine import extras
from search.engine.materialize import model_parameters
from search.engine.model import load_model
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.strategies import calibrated
from search.strategies.fisher.diagonal import diagonal_fisher
from search.strategies.fisher.method import EXTRAS as LABEL

CACHE_VERSION = 1  # bump when what is cached changes meaning
FISHER_FILE = "fisher.safetensors"


def cache_key(fingerprint: Mapping[str, Any], data: Calibration, dtype: torch.dtype) -> str:
    """The cache folder name of one checkpoint's Fisher on ``data``."""
    return calibrated.cache_key(fingerprint, data, dtype, CACHE_VERSION)


@dataclass(frozen=True)
class FisherLoad:
    """What :func:`load_fishers` did: the cache keys, how many were computed, seconds spent."""

    keys: tuple[str, ...]
    computed: tuple[str, ...]  # checkpoint names whose Fisher was computed now
    seconds: float
    backward_passes: int


def load_fishers(
    pool: CheckpointPool,
    data: Calibration,
    folder: Path | None,
    model: Any = None,
    tokenizer: Any = None,
    *,
    progress: bool = True,
) -> FisherLoad:
    """Load every checkpoint's Fisher into ``pool``; compute (and cache) the missing ones.

    Args:
        pool: the opened pool; its stacks are loaded when a Fisher must be computed.
        data: the calibration examples.
        folder: the cache folder (``None``: compute everything, cache nothing).
        model, tokenizer: the resident model (:meth:`CheckpointPool.load_model`); built here
            when ``None`` and something must be computed. Its weights are left at the last
            checkpoint computed.
        progress: show a progress bar over the K × N backward passes.
    """
    start = time.perf_counter()
    fingerprints = pool.identity.fingerprint()["checkpoints"]
    keys = [cache_key(fp, data, pool.dtype) for fp in fingerprints]
    missing = [
        i
        for i, key in enumerate(keys)
        if folder is None or not (folder / key / FISHER_FILE).is_file()
    ]
    computed: dict[int, dict[str, torch.Tensor]] = {}  # cached ones are read from their files
    passes = 0
    if missing:
        if model is None:
            model, tokenizer = load_model(pool)
        examples = _one_example_batches(data, model, tokenizer, pool.device)
        params = model_parameters(pool, model)
        bar = calibrated.progress_bar(len(missing) * len(examples), progress)
        for i in missing:
            bar.set_description(f"fisher {pool.names[i]}")
            with torch.no_grad():  # the model becomes checkpoint i
                for name, param in params.items():
                    param.copy_(pool.stack(name)[i])
            fisher = diagonal_fisher(model, params, examples, on_example=lambda: bar.update(1))
            computed[i] = {n: t.float().cpu() for n, t in fisher.items()}
            passes += len(examples)
            if folder is not None:
                calibrated.write_entry(
                    folder,
                    keys[i],
                    FISHER_FILE,
                    computed[i],
                    calibrated.entry_meta(fingerprints[i], data, pool.dtype, CACHE_VERSION),
                )
        bar.close()
    source = {**data.describe(), "cache": [str(folder / k) for k in keys] if folder else None}
    records = tuple(e.to_json() for e in data.examples)
    info = {"source": source, "records": records}
    dtype = fisher_dtype(pool.dtype)
    if folder is not None:  # from the cache's files, in the pool's placement
        files = [folder / key / FISHER_FILE for key in keys]
        pool.hold(extras.from_files(pool, LABEL, files, dtype, pool.shapes, info))
    else:  # no cache: every one was computed here
        fishers = [computed[i] for i in range(len(keys))]
        pool.hold(extras.from_tensors(pool, LABEL, fishers, dtype, pool.shapes, info))
    return FisherLoad(
        keys=tuple(keys),
        computed=tuple(pool.names[i] for i in missing),
        seconds=time.perf_counter() - start,
        backward_passes=passes,
    )


def fisher_dtype(dtype: torch.dtype) -> torch.dtype:
    """The Fishers' dtype in a pool of ``dtype``: the pool's (float16's range is too small for
    squared gradients: bfloat16 then)."""
    return torch.bfloat16 if dtype == torch.float16 else dtype


def hold_fishers(
    pool: CheckpointPool,
    fishers: Sequence[Mapping[str, torch.Tensor]],
    source: Mapping[str, Any] | None = None,
    records: Sequence[Mapping[str, str]] = (),
) -> CheckpointPool:
    """Hold Fishers given as tensors (one mapping per checkpoint, tensor name -> its Fisher)
    on the pool's device, with their provenance (for the model card)."""
    info = {"source": dict(source) if source is not None else None, "records": tuple(records)}
    held = extras.from_tensors(pool, LABEL, fishers, fisher_dtype(pool.dtype), pool.shapes, info)
    return pool.hold(held)


def fishers_from_file(pool: CheckpointPool, path: Path, n: int) -> None:
    """The Fishers of a ``merge-search merge`` YAML (``parameters.fisher_data``, N): computed,
    not cached (there is no study to put a cache beside)."""
    data = calibration_from_file(path, n, "parameters.fisher_data")
    load_fishers(pool, data, None)


def _one_example_batches(data: Calibration, model: Any, tokenizer: Any, device: Any) -> list:
    """Each example as its own batch (a squared gradient per example)."""
    if tokenizer is None:
        raise UserError("merge.fisher: the checkpoints have no tokenizer to read the data with")
    tokenized = tokenize(data.examples, tokenizer, context_length(model))
    if not tokenized:
        raise UserError(f"{data.label}: no calibration example has a token to score")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return [batches([pair], 1, pad, device)[0] for pair in tokenized]
