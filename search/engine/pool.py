"""The checkpoint pool: N Hugging Face folders (+ an optional base), checked, then placed.

The pool does one job: tensor access and placement. :meth:`CheckpointPool.open` reads only the
``config.json`` files and safetensors headers and checks, before any tensor is read, that all
folders share the architecture, tensor names and shapes and that no file is cut short (one
:class:`~search.errors.UserError` line naming the folder or file otherwise). Where the tensors
live is its **placement** (:mod:`search.engine.placement`: ``device``, ``host``, ``disk`` or
``auto``); merges run, and the resident model (:mod:`search.engine.model`) lives, on its
``device`` whatever the placement. Per-tensor extras that some methods read are held beside the
weights (:mod:`search.engine.extras`). The files' identity is :attr:`CheckpointPool.identity`
(:mod:`search.engine.identity`); layer groups are :mod:`search.engine.layers`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from search.engine.checkpoint import Checkpoint, check_compatible, open_checkpoint, unique_names
from search.engine.device import resolve_device
from search.engine.digests import DigestCache
from search.engine.dtypes import DTYPES, resolve_dtype, stored_dtype
from search.engine.extras import Extras
from search.engine.identity import PoolIdentity, check_distinct_content, check_listed_once
from search.engine.kernels import KERNELS, choose_kernel
from search.engine.layers import count_layers, group_of
from search.engine.placement import (
    BLOCK_BYTES,
    PLACEMENTS,
    Piece,
    PlacementChoice,
    PoolSizes,
    TensorStore,
    build_store,
    choose_placement,
    device_free_bytes,
    host_available_bytes,
    pool_sizes,
    split_ranges,
)
from search.errors import UserError

LOAD_THREADS = 8  # files read at once by a resident load (at most the CPU count): SSDs gain


class CheckpointPool:
    """K checkpoints of one architecture (+ an optional base), merged on one device and dtype.

    Build it with :meth:`open`. Attributes: ``names`` (folder basenames made unique), ``paths``,
    ``base_path``, ``device``, ``dtype``, ``placement`` (and ``placement_choice``: why),
    ``tensor_names`` (file order), ``shapes``, ``n_layers``, ``config`` (the base's config.json,
    else the first checkpoint's), ``checkpoint_store``, ``base_store``, ``identity``,
    ``input_dtype`` (what the input files store, :func:`~search.engine.dtypes.stored_dtype` over
    the checkpoints and the base: what an export writes by default).
    """

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        base: Checkpoint | None,
        device: torch.device,
        dtype: torch.dtype,
        kernel: str = "auto",
        placement: str = "device",
        *,
        block_bytes: int = BLOCK_BYTES,
        choice: PlacementChoice | None = None,
        digest_cache: DigestCache | None = None,
    ) -> None:
        self.names: tuple[str, ...] = tuple(c.name for c in checkpoints)
        self.paths: tuple[Path, ...] = tuple(c.path for c in checkpoints)
        self.base_path: Path | None = base.path if base else None
        self.device = device
        self.dtype = dtype
        opened = [*checkpoints, *([base] if base else [])]
        self.input_dtype: torch.dtype = DTYPES[stored_dtype([c.tensors for c in opened])]
        reference = base or checkpoints[0]
        self.reference_path: Path = reference.path
        self.config: dict[str, Any] = reference.config
        self.tensor_names: tuple[str, ...] = tuple(reference.tensors)
        self.shapes: dict[str, tuple[int, ...]] = {n: i.shape for n, i in reference.tensors.items()}
        self.n_layers: int = count_layers(self.tensor_names)
        self.weighted_sum = choose_kernel(device, dtype, kernel)
        self.placement = placement
        self.placement_choice = choice or PlacementChoice(placement, f"pool: {placement}")
        self.checkpoint_store: TensorStore = build_store(
            placement,
            [c.tensors for c in checkpoints],
            self.shapes,
            dtype,
            device,
            block_bytes=block_bytes,
        )
        self.base_store: TensorStore | None = (
            build_store(
                placement, [base.tensors], self.shapes, dtype, device, block_bytes=block_bytes
            )
            if base
            else None
        )
        self._loaded = {"checkpoints": False, "base": False}
        self.kernel = kernel
        self.block_bytes = block_bytes
        self._extras: dict[str, Extras] = {}  # per-tensor extras by kind (search.engine.extras)
        self._fused: dict[str, Any] = {}  # methods' fused kernels, built once per pool
        self.identity = PoolIdentity(checkpoints, base, digest_cache)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        checkpoints: Sequence[str | Path],
        base_model: str | Path | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        *,
        kernel: str = "auto",
        placement: str = "device",
        block_bytes: int = BLOCK_BYTES,
    ) -> CheckpointPool:
        """Open and check the folders; reads headers only (``UserError`` on any mismatch).

        ``base_model``: the shared base (task-vector methods; also the config and tokenizer's
        source when given); ``device``: ``cpu``, ``cuda[:N]`` or ``auto``; ``dtype``: storage
        and model dtype (merges accumulate in float32); ``kernel``: the linear merges' kernel
        (:mod:`search.engine.kernels`); ``placement``: ``auto`` is decided here for one worker
        (:func:`~search.engine.placement.choose_placement`); ``block_bytes``: one streamed
        block's K slices (``host`` on CUDA, ``disk``).
        """
        if not checkpoints:
            raise UserError("checkpoint pool: expected at least one checkpoint folder")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype)

        if kernel not in KERNELS:
            raise UserError(f"kernel: expected one of {', '.join(KERNELS)}, got {kernel!r}")
        if placement not in PLACEMENTS:
            raise UserError(f"pool: expected one of {', '.join(PLACEMENTS)}, got {placement!r}")
        check_listed_once(checkpoints)
        names = unique_names([Path(p) for p in checkpoints])
        opened = [open_checkpoint(Path(p), n) for p, n in zip(checkpoints, names, strict=True)]
        base = open_checkpoint(Path(base_model), Path(base_model).name) if base_model else None
        reference = base or opened[0]
        for other in opened if base else opened[1:]:
            check_compatible(reference, other)
        cache = DigestCache()
        check_distinct_content(opened, cache)
        shapes = {n: i.shape for n, i in reference.tensors.items()}
        sizes = pool_sizes(
            shapes, len(opened), torch_dtype, needs_base=base is not None, linear=False
        )
        choice = choose_placement(
            placement,
            sizes,
            device_free=device_free_bytes(torch_device) if placement == "auto" else None,
            host_available=host_available_bytes() if placement == "auto" else None,
        )
        return cls(
            opened,
            base,
            torch_device,
            torch_dtype,
            kernel,
            choice.placement,
            block_bytes=block_bytes,
            choice=choice,
            digest_cache=cache,
        )

    # -- tensors -----------------------------------------------------------------------------

    def load(self, *, base: bool = False, threads: int | None = None) -> CheckpointPool:
        """Get the checkpoints ready now (with ``base``, the base too): resident placements read
        every file, ``threads`` files at a time (default: :data:`LOAD_THREADS`, at most the CPU
        count); ``disk`` opens the maps."""
        if base and self.base_store is None:
            raise UserError("checkpoint pool: this merge method needs a base model; none given")
        wanted = (("checkpoints", self.checkpoint_store, True), ("base", self.base_store, base))
        todo = {key: store for key, store, on in wanted if on and not self._loaded[key]}
        if not todo:
            return self
        n = threads or min(LOAD_THREADS, os.cpu_count() or 1)
        resident = self.placement in ("device", "host")
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="pool-load") as executor:
            # resident placements read every file now: hash them at the same time (the page
            # cache serves the second reader), so the fingerprint costs no second disk read
            hashing = (
                executor.submit(
                    self.identity.content_digests, executor if n > 1 else None, base=base
                )
                if resident
                else None
            )
            for key, store in todo.items():
                store.load(executor if n > 1 else None)  # type: ignore[union-attr]
                self._loaded[key] = True
            if hashing is not None:
                hashing.result()
        if resident:
            self.identity.check_unchanged()  # the bytes loaded are the bytes hashed
        return self

    def stack(self, name: str) -> torch.Tensor:
        """The ``[K, *shape]`` stack of tensor ``name`` on the pool's device (do not write it):
        resident placements the stack itself (loaded on first use); others a fresh copy."""
        return self.load().checkpoint_store.get(name)

    def base_tensor(self, name: str) -> torch.Tensor:
        """The base model's tensor ``name`` on the pool's device (loads the base on first use)."""
        return self.load(base=True).base_store.get(name)[0]  # type: ignore[union-attr]

    def pieces(self, names: Sequence[str], *, split: bool, base: bool) -> Iterator[Piece]:
        """Each tensor of ``names`` as the merge reads it, in order (see :class:`Piece`).

        Args:
            split: the merge is elementwise, so streaming placements may hand it blocks.
            base: also hand over the base's slices.
        """
        self.load(base=base)
        block = self.checkpoint_store.block_elems() if split else None
        requests = [
            (name, start, stop)
            for name in names
            for start, stop in split_ranges(math.prod(self.shapes[name]), block)
        ]
        stacks = self.checkpoint_store.stream(requests)
        bases = (
            self.base_store.stream(requests)  # type: ignore[union-attr]
            if base
            else itertools.repeat(None)
        )
        for (name, start, stop), stack, base_slices in zip(requests, stacks, bases, strict=False):
            whole = start == 0 and stop == math.prod(self.shapes[name])
            yield Piece(
                name, start, stop, whole, stack, None if base_slices is None else base_slices[0]
            )

    def resident_bytes(self) -> int:
        """Bytes held between trials by the stacks, the base and the extras."""
        stores = (self.checkpoint_store, self.base_store)
        held = sum(e.resident_bytes() for e in self._extras.values())
        return sum(s.resident_bytes() for s in stores if s is not None) + held

    # -- per-tensor extras (methods with ``extras``) ------------------------------------------

    def hold(self, extras: Extras) -> CheckpointPool:
        """Hold ``extras`` (:mod:`search.engine.extras`: :func:`~search.engine.extras.
        from_tensors`, :func:`~search.engine.extras.from_files`), replacing the same kind."""
        if extras.kind in self._extras:
            self._extras[extras.kind].close()
        self._extras[extras.kind] = extras
        return self

    def extras(self, kind: str) -> Extras | None:
        """The ``kind`` extras held (``None`` when none are)."""
        return self._extras.get(kind)

    def fused_kernel(self, name: str, build: Callable[[], Any]) -> Any:
        """The fused kernel ``name`` of this pool, built by ``build()`` on first use."""
        if name not in self._fused:
            self._fused[name] = build()
        return self._fused[name]

    def model_bytes(self) -> int:
        """Bytes of one model in the pool dtype."""
        return self.sizes(needs_base=False, linear=True).model

    def sizes(self, *, needs_base: bool, linear: bool) -> PoolSizes:
        """One worker's memory needs (:func:`~search.engine.placement.pool_sizes`)."""
        return pool_sizes(
            self.shapes, len(self.names), self.dtype, needs_base=needs_base, linear=linear
        )

    def close(self) -> None:
        """Release the stores' files, buffers and page locks (the pool is unusable after)."""
        for store in (self.checkpoint_store, self.base_store):
            if store is not None:
                store.close()
        for extras in self._extras.values():
            extras.close()

    def group_of(self, name: str, n_groups: int) -> int:
        """Layer group of tensor ``name`` with ``n_groups`` groups (:func:`.layers.group_of`)."""
        return group_of(name, n_groups, self.n_layers)

    def __repr__(self) -> str:
        base = f", base={self.base_path.name}" if self.base_path else ""
        return (
            f"CheckpointPool({list(self.names)}{base}, device={self.device}, dtype={self.dtype}, "
            f"placement={self.placement})"
        )
