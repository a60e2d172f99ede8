"""Each checkpoint's Gram matrices: computed once on the calibration data, cached on disk.

Used by a study's ``merge.regmean`` (:mod:`search.strategies.regmean`), by ``merge-search merge``
and by an export. :func:`load_grams` puts every checkpoint's Grams into the pool, the missing ones
computed with :func:`.gram.gram_matrices` (K forward passes over the examples, with a progress
bar) and cached, then all read from the cache's files by a store of the pool's placement (the
pool's per-tensor extras of kind ``gram``, :mod:`search.engine.extras`, covering the linear layers
only); without a cache folder they stay on the device (:func:`hold_grams`).

The cache: one folder per checkpoint, ``<cache_dir>/<key>/`` with ``gram.safetensors`` (one
``[in, in]`` tensor per linear layer, named as the layer's weight) and ``meta.json``. The key
hashes the checkpoint's fingerprint, the data's digest, N and the dtype the model ran in, so a
resumed study, another worker and an export find the Grams, and a changed checkpoint gets a new
key. A folder is written beside its final name and renamed into place, so a crash leaves no
half-written entry.
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
from search.engine.dtypes import work_dtype
from search.engine.files import read_table
from search.engine.materialize import model_parameters
from search.engine.model import load_model
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.strategies import calibrated
from search.strategies.regmean.gram import gram_matrices, linear_layers
from search.strategies.regmean.method import EXTRAS

CACHE_VERSION = 1  # bump when what is cached changes meaning
GRAM_FILE = "gram.safetensors"
BATCH = 8  # examples per forward pass (padding is masked out of the Grams)


def cache_key(fingerprint: Mapping[str, Any], data: Calibration, dtype: torch.dtype) -> str:
    """The cache folder name of one checkpoint's Grams on ``data``."""
    return calibrated.cache_key(fingerprint, data, dtype, CACHE_VERSION, kind=EXTRAS)


@dataclass(frozen=True)
class GramLoad:
    """What :func:`load_grams` did: the cache keys, which were computed, seconds spent."""

    keys: tuple[str, ...]
    computed: tuple[str, ...]  # checkpoint names whose Grams were computed now
    layers: int  # linear layers with a Gram
    seconds: float


def load_grams(
    pool: CheckpointPool,
    data: Calibration,
    folder: Path | None,
    model: Any = None,
    tokenizer: Any = None,
    *,
    progress: bool = True,
) -> GramLoad:
    """Load every checkpoint's Grams into ``pool``; compute (and cache) the missing ones.

    Args:
        pool: the opened pool; its stacks are loaded when a Gram must be computed.
        data: the calibration examples.
        folder: the cache folder (``None``: compute everything, cache nothing).
        model, tokenizer: the resident model (:meth:`CheckpointPool.load_model`); built here
            when ``None``. Its weights are left at the last checkpoint computed.
        progress: show a progress bar over the K × N examples.
    """
    start = time.perf_counter()
    fingerprints = pool.identity.fingerprint()["checkpoints"]
    keys = [cache_key(fp, data, pool.dtype) for fp in fingerprints]
    missing = [
        i
        for i, key in enumerate(keys)
        if folder is None or not (folder / key / GRAM_FILE).is_file()
    ]
    computed: dict[int, dict[str, torch.Tensor]] = {}
    if missing:
        if model is None:
            model, tokenizer = load_model(pool)
        params = model_parameters(pool, model)
        layers = linear_layers(model, params)
        if not layers:
            raise UserError("regmean: the model has no linear layer inside its transformer blocks")
        examples = _batches(data, model, tokenizer, pool.device)
        total = len(missing) * sum(int(b[0].shape[0]) for b in examples)
        bar = calibrated.progress_bar(total, progress)
        for i in missing:
            bar.set_description(f"gram {pool.names[i]}")
            with torch.no_grad():  # the model becomes checkpoint i
                for name, param in params.items():
                    param.copy_(pool.stack(name)[i])
            grams = gram_matrices(model, layers, examples, on_batch=bar.update)
            computed[i] = {n: g.cpu() for n, g in grams.items()}
            if folder is not None:
                calibrated.write_entry(
                    folder,
                    keys[i],
                    GRAM_FILE,
                    computed[i],
                    calibrated.entry_meta(fingerprints[i], data, pool.dtype, CACHE_VERSION),
                )
        bar.close()
        shapes = {n: (layer.in_features, layer.in_features) for n, layer in layers.items()}
    else:  # all cached: the layers are those of the first entry (every file is checked)
        assert folder is not None
        table = read_table(folder / keys[0] / GRAM_FILE)[0]
        shapes = {n: tuple(info.shape) for n, info in table.items()}
    source = {**data.describe(), "cache": [str(folder / k) for k in keys] if folder else None}
    info = {"source": source, "records": tuple(e.to_json() for e in data.examples)}
    dtype = work_dtype(pool.dtype)  # a solve needs float32 at least
    if folder is not None:  # from the cache's files, in the pool's placement
        files = [folder / key / GRAM_FILE for key in keys]
        pool.hold(extras.from_files(pool, EXTRAS, files, dtype, shapes, info))
    else:
        grams = [computed[i] for i in range(len(keys))]
        pool.hold(extras.from_tensors(pool, EXTRAS, grams, dtype, shapes, info))
    return GramLoad(
        keys=tuple(keys),
        computed=tuple(pool.names[i] for i in missing),
        layers=len(shapes),
        seconds=time.perf_counter() - start,
    )


def hold_grams(
    pool: CheckpointPool,
    grams: Sequence[Mapping[str, torch.Tensor]],
    source: Mapping[str, Any] | None = None,
) -> CheckpointPool:
    """Hold Grams given as tensors (one mapping per checkpoint, linear layer's weight name ->
    ``[in, in]`` Gram) on the pool's device; the tensors not named are averaged."""
    shapes = {n: tuple(g.shape) for n, g in grams[0].items()}
    info = {"source": dict(source) if source is not None else None, "records": ()}
    held = extras.from_tensors(pool, EXTRAS, grams, work_dtype(pool.dtype), shapes, info)
    return pool.hold(held)


def grams_from_file(pool: CheckpointPool, path: Path, n: int) -> None:
    """The Grams of a ``merge-search merge`` YAML (``parameters.regmean_data``, N): computed,
    not cached (there is no study to put a cache beside)."""
    load_grams(pool, calibration_from_file(path, n, "parameters.regmean_data"), None)


def _batches(data: Calibration, model: Any, tokenizer: Any, device: Any) -> list:
    if tokenizer is None:
        raise UserError("merge.regmean: the checkpoints have no tokenizer to read the data with")
    tokenized = tokenize(data.examples, tokenizer, context_length(model))
    if not tokenized:
        raise UserError(f"{data.label}: no calibration example has a token to score")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return batches(tokenized, BATCH, pad, device)
