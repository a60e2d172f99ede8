"""Per-tensor extras: statistics a merge method reads beside the checkpoints' weights.

Some methods need more than the K checkpoints: one ``[K, *shape]`` stack per name of what each
checkpoint measured on calibration data (a diagonal Fisher per weight tensor, a Gram matrix per
linear layer ...). The pool holds them by ``kind`` (:meth:`search.engine.pool.CheckpointPool.
hold_extras`), a method declares the kinds it reads (:attr:`~search.engine.registry.MergeMethod.
extras`) and its tensor function gets each one's stack for the tensor it merges as a keyword
argument of the kind's name. Extras may cover only some tensors (a Gram matrix per linear layer):
for a tensor they do not cover the function gets ``None``. The engine knows nothing of what they
mean; the strategy that computes them owns that.

Extras come either as tensors (kept on the pool's device) or as safetensors files, read by a
store of the pool's placement (:mod:`search.engine.placement`), so they follow
``device``/``host``/``disk`` like the checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from search.engine.files import read_table
from search.engine.placement import TensorStore, build_store
from search.errors import UserError

if TYPE_CHECKING:
    from search.engine.pool import CheckpointPool

LOAD_THREADS = 8  # files read at once (at most the CPU count)


@dataclass
class Extras:
    """One kind of per-tensor extras of the K checkpoints.

    Attributes:
        kind: its name; a method's tensor function gets the stacks as ``kind=``.
        info: JSON-able description of how they were made (for the model card, an export).
        stacks: name -> ``[K, *shape]`` on the pool's device (given as tensors), or
        store: a :class:`~search.engine.placement.TensorStore` (read from files).
    """

    kind: str
    info: dict[str, Any] = field(default_factory=dict)
    stacks: Mapping[str, torch.Tensor] | None = None
    store: TensorStore | None = None

    def get(self, name: str) -> torch.Tensor | None:
        """The ``[K, *shape]`` stack of ``name`` on the pool's device (do not write it;
        resident: the stack itself; ``disk``, ``host`` on CUDA: a fresh copy); ``None`` for a
        tensor these extras do not cover."""
        if not self.covers(name):
            return None
        if self.store is not None:
            return self.store.get(name)
        assert self.stacks is not None
        return self.stacks[name]

    def covers(self, name: str) -> bool:
        """Whether these extras hold a stack for tensor ``name``."""
        return name in (self.store.shapes if self.store is not None else self.stacks or {})

    def resident_bytes(self) -> int:
        if self.store is not None:
            return self.store.resident_bytes()
        return sum(t.numel() * t.element_size() for t in (self.stacks or {}).values())

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def from_tensors(
    pool: CheckpointPool,
    kind: str,
    per_checkpoint: Sequence[Mapping[str, torch.Tensor]],
    dtype: torch.dtype,
    shapes: Mapping[str, tuple[int, ...]],
    info: Mapping[str, Any] | None = None,
) -> Extras:
    """``kind`` extras given as tensors: one mapping per checkpoint, in pool order, name ->
    tensor of ``shapes[name]`` (any float dtype and device), kept as one ``[K, *shape]`` stack
    per name in ``dtype`` on the pool's device; ``info`` describes them (JSON-able). The names
    of ``shapes`` are the tensors they cover (any subset of the pool's, in any shape)."""
    _check_count(pool, kind, len(per_checkpoint))
    stacks = {}
    for name, shape in shapes.items():
        stack = torch.empty((len(per_checkpoint), *shape), dtype=dtype, device=pool.device)
        for i, tensors in enumerate(per_checkpoint):
            tensor = tensors.get(name)
            _check_shape(pool, kind, i, name, shape, None if tensor is None else tensor.shape)
            stack[i].copy_(tensor)
        stacks[name] = stack
    return Extras(kind, dict(info or {}), stacks=stacks)


def from_files(
    pool: CheckpointPool,
    kind: str,
    files: Sequence[Path],
    dtype: torch.dtype,
    shapes: Mapping[str, tuple[int, ...]],
    info: Mapping[str, Any] | None = None,
    *,
    threads: int | None = None,
) -> Extras:
    """``kind`` extras read from one safetensors file per checkpoint (pool order) by a store of
    the pool's placement: ``device`` and ``host`` hold them like the checkpoints' stacks,
    ``disk`` reads the files' memory maps each trial; the values handed to a merge are the same
    bits in every placement.

    Raises:
        UserError: a file is unreadable or truncated, or lacks a name of ``shapes`` or has it in
            another shape (one line naming the checkpoint and the tensor).
    """
    _check_count(pool, kind, len(files))
    tables = [read_table(Path(f))[0] for f in files]
    for i, table in enumerate(tables):
        for name, shape in shapes.items():
            got = table[name].shape if name in table else None
            _check_shape(pool, kind, i, name, shape, got)
    store = build_store(
        pool.placement,
        tables,
        dict(shapes),
        dtype,
        pool.device,
        block_bytes=pool.block_bytes,
    )
    n = threads or min(LOAD_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="extras-load") as executor:
        store.load(executor if n > 1 else None)
    return Extras(kind, dict(info or {}), store=store)


def _check_count(pool: CheckpointPool, kind: str, n: int) -> None:
    if n != len(pool.names):
        raise UserError(f"checkpoint pool: {n} {kind}s for {len(pool.names)} checkpoints")


def _check_shape(pool: CheckpointPool, kind: str, i: int, name: str, expected, shape) -> None:  # noqa: ANN001
    if shape is None or tuple(shape) != tuple(expected):
        got = "missing" if shape is None else f"shape {list(shape)}"
        raise UserError(
            f"checkpoint pool: {kind} of {pool.names[i]} for tensor {name} is {got} "
            f"(expected shape {list(expected)})"
        )


@dataclass(frozen=True)
class ExtrasExport:
    """What an exported merge keeps of a method's extras (:meth:`MethodExtension.export`).

    Attributes:
        parameters: extension keys written under the YAML's ``parameters`` (read back by
            ``merge-search merge``).
        card: model-card sections, title -> content.
        files: file name -> text, written beside the merged weights.
    """

    parameters: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


class MethodExtension:
    """What a method that reads extras brings to ``merge-search merge`` and to an export:
    the extension keys of its mergekit-format YAML and how to make, and keep, its extras.
    Declared by the method (:attr:`~search.engine.registry.MergeMethod.extension`)."""

    keys: tuple[str, ...] = ()  # its keys under the YAML's ``parameters``
    # the key of ``keys`` that names its calibration data (a .txt or .jsonl file), if it reads
    # any: with that key alone a YAML makes its extras (what a contract test over every method
    # needs)
    data_key: str | None = None

    def parse(self, file: Path, method: str, given: dict[str, Any]) -> dict[str, Any]:
        """Its settings, taken out of the YAML's ``given`` parameters and checked
        (``UserError`` naming ``file`` and the key)."""
        return {}

    def inputs(self, settings: Mapping[str, Any]) -> list[tuple[str, Path]]:
        """Files its settings name, ``(what, path)``: an output folder keeps clear of them."""
        return []

    def load(self, pool: CheckpointPool, settings: Mapping[str, Any]) -> None:
        """Compute its extras for ``pool`` and hold them there (``merge-search merge``)."""

    def export(self, pool: CheckpointPool, target: Path) -> ExtrasExport:
        """What a merge exported to ``target`` keeps of the extras ``pool`` holds."""
        return ExtrasExport()
