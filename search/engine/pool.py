"""The checkpoint pool: N Hugging Face folders (+ an optional base), checked, then placed.

:meth:`CheckpointPool.open` reads only the ``config.json`` files and the safetensors headers, and
checks before any tensor is read that all folders share the architecture, the tensor names and
the shapes, and that no file is cut short (:func:`search.engine.files.read_table`); a mismatch is
one :class:`~search.errors.UserError` line naming the folder or file, the tensor and both shapes
(or the missing file / unreadable header / truncated tensor).

Where the tensors live is the pool's **placement** (:mod:`search.engine.placement`): ``device``
keeps, per tensor name, one ``[K, *shape]`` stack of the K checkpoints in the pool's dtype on the
pool's device (and the base's tensor separately, only when a method needs it); ``host`` keeps the
stacks in host memory and streams them to the device each trial; ``disk`` keeps nothing and reads
the files' memory maps each trial; ``auto`` picks by free memory. Resident stacks are read on the
first merge (or :meth:`load`), several files at a time. The pool's ``device`` is where merges
run and where the resident model lives, whatever the placement. Memory: ``K`` models (``K + 1``
with a base method) in the pool dtype for ``device``/``host``, buffers for ``disk``, plus the
resident model that :meth:`load_model` builds.

Methods that read Fishers (``fisher``) need one more pool's worth, in the same ``[K, *shape]``
per-tensor layout and the pool's dtype (bfloat16 for a float16 pool: squared gradients
overflow float16): :meth:`load_fisher_files` reads them from safetensors files (a study's
cache) into a store of the pool's placement, so they follow ``device``/``host``/``disk`` like
the checkpoints; :meth:`load_fishers` takes them as tensors (computed without a cache) and
keeps them on the device.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from search.engine.checkpoint import (
    INDEX_FILE,
    SINGLE_FILE,
    Checkpoint,
    check_compatible,
    open_checkpoint,
    unique_names,
)
from search.engine.device import resolve_device
from search.engine.digests import DigestCache, FileStamp, changed_files, digests
from search.engine.files import TensorInfo, read_header, read_table
from search.engine.kernels import KERNELS, choose_fisher_kernel, choose_kernel
from search.engine.placement import (
    BLOCK_BYTES,
    PLACEMENTS,
    PlacementChoice,
    PoolSizes,
    TensorStore,
    build_store,
    choose_placement,
    device_free_bytes,
    host_available_bytes,
    split_ranges,
)
from search.errors import UserError

__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "CheckpointPool",
    "Piece",
    "TensorInfo",
    "read_header",
    "resolve_dtype",
]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}
LOAD_THREADS = 8  # files read at once by a resident load (at most the CPU count): SSDs gain
# Transformer blocks: "model.layers.3.", "transformer.h.3.", "blocks.3." ...
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_EMBED_RE = re.compile(r"embed|(?:^|\.)(?:wte|wpe)\.")


@dataclass(frozen=True)
class Piece:
    """One tensor, or one block of its flattened elements, as a merge reads it.

    ``stack``: the K checkpoints' slices, ``[K, *shape]`` when ``whole``, else ``[K, stop -
    start]``; ``base``: the base's slice (``[*shape]`` or ``[stop - start]``) when asked for.
    Both live on the pool's device and may be reused buffers: use them before the next piece.
    """

    name: str
    start: int
    stop: int
    whole: bool
    stack: torch.Tensor
    base: torch.Tensor | None


class CheckpointPool:
    """K checkpoints of one architecture (+ an optional base), merged on one device and dtype.

    Build it with :meth:`open`. Attributes: ``names`` (folder basenames made unique), ``paths``,
    ``base_path``, ``device`` (where merges run and the model lives), ``dtype``, ``placement``
    (``device``, ``host`` or ``disk``), ``placement_choice`` (the placement and why),
    ``tensor_names`` (in file order), ``shapes``, ``n_layers``, ``config`` (the reference's
    config.json: the base's, else the first checkpoint's), ``checkpoint_store`` and
    ``base_store`` (the :class:`~search.engine.placement.TensorStore` of each).
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

        self._checkpoints = tuple(checkpoints)
        self._base = base
        self.names: tuple[str, ...] = tuple(c.name for c in checkpoints)
        self.paths: tuple[Path, ...] = tuple(c.path for c in checkpoints)
        self.base_path: Path | None = base.path if base else None
        self.device = device
        self.dtype = dtype
        reference = base or checkpoints[0]
        self.reference_path: Path = reference.path
        self.config: dict[str, Any] = reference.config
        self.tensor_names: tuple[str, ...] = tuple(reference.tensors)
        self.shapes: dict[str, tuple[int, ...]] = {n: i.shape for n, i in reference.tensors.items()}
        layers = [int(m.group(1)) for n in self.tensor_names if (m := _LAYER_RE.search(n))]
        self.n_layers: int = max(layers) + 1 if layers else 0
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
        self.fisher_mean = choose_fisher_kernel(device, dtype, kernel)  # methods with Fishers
        self._fishers: dict[str, torch.Tensor] | None = None  # given as tensors: on the device
        self.fisher_store: TensorStore | None = None  # read from files: the pool's placement
        self._block_bytes = block_bytes
        # where the Fishers came from (calibration data, N, cache keys): for the model card
        self.fisher_source: dict[str, Any] | None = None
        self.fisher_records: tuple[dict[str, str], ...] = ()
        # whole-file XXH3-128 of every checkpoint file (search.engine.digests), once known
        self._digests: dict[Path, str] = {}
        self._digest_cache = digest_cache

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

        Args:
            checkpoints: the K model folders to merge.
            base_model: the shared base (needed by task-vector methods; also the source of the
                config and tokenizer when given).
            device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``: where merges run and the model
                lives.
            dtype: storage and model dtype (``float32``, ``bfloat16``, ``float16``); merges
                always accumulate in float32.
            kernel: weighted-sum kernel for linear merges, see :mod:`search.engine.kernels`.
            placement: ``device``, ``host``, ``disk`` or ``auto`` (decided here by
                :func:`~search.engine.placement.choose_placement` for one worker, counting the
                base when one is given), see :mod:`search.engine.placement`.
            block_bytes: bytes of one streamed block's K slices (``host`` on CUDA, ``disk``).
        """
        if not checkpoints:
            raise UserError("checkpoint pool: expected at least one checkpoint folder")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype)

        if kernel not in KERNELS:
            raise UserError(f"kernel: expected one of {', '.join(KERNELS)}, got {kernel!r}")
        if placement not in PLACEMENTS:
            raise UserError(f"pool: expected one of {', '.join(PLACEMENTS)}, got {placement!r}")
        _check_listed_once(checkpoints)
        names = unique_names([Path(p) for p in checkpoints])
        opened = [open_checkpoint(Path(p), n) for p, n in zip(checkpoints, names, strict=True)]
        base = open_checkpoint(Path(base_model), Path(base_model).name) if base_model else None
        reference = base or opened[0]
        for other in opened if base else opened[1:]:
            check_compatible(reference, other)
        cache = DigestCache()
        _check_distinct_content(opened, cache)
        shapes = {n: i.shape for n, i in reference.tensors.items()}
        sizes = _sizes(shapes, len(opened), torch_dtype, needs_base=base is not None, linear=False)
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

    def choose_placement(
        self,
        requested: str,
        *,
        needs_base: bool,
        linear: bool,
        per_device: int = 1,
        per_host: int = 1,
    ) -> PlacementChoice:
        """The placement for ``requested`` (``auto``: by free memory now) and the line why."""
        return choose_placement(
            requested,
            self.sizes(needs_base=needs_base, linear=linear),
            device_free=device_free_bytes(self.device),
            host_available=host_available_bytes(),
            per_device=per_device,
            per_host=per_host,
        )

    # -- tensors -----------------------------------------------------------------------------

    def load(self, *, base: bool = False, threads: int | None = None) -> CheckpointPool:
        """Get the checkpoints ready now (with ``base``, the base too): resident placements read
        every file, ``threads`` files at a time (default: :data:`LOAD_THREADS`, at most the CPU
        count); ``disk`` opens the maps."""
        if base and self.base_store is None:
            raise UserError("checkpoint pool: this merge method needs a base model; none given")
        todo = {
            key: store
            for key, store, wanted in (
                ("checkpoints", self.checkpoint_store, True),
                ("base", self.base_store, base),
            )
            if wanted and not self._loaded[key]
        }
        if not todo:
            return self
        n = threads or min(LOAD_THREADS, os.cpu_count() or 1)
        resident = self.placement in ("device", "host")
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="pool-load") as executor:
            # resident placements read every file now: hash them at the same time (the page
            # cache serves the second reader), so the fingerprint costs no second disk read
            hashing = (
                executor.submit(self.content_digests, executor if n > 1 else None, base=base)
                if resident
                else None
            )
            for key, store in todo.items():
                store.load(executor if n > 1 else None)  # type: ignore[union-attr]
                self._loaded[key] = True
            if hashing is not None:
                hashing.result()
        if resident:
            self.check_unchanged()  # the bytes loaded are the bytes hashed
        return self

    def stack(self, name: str) -> torch.Tensor:
        """The ``[K, *shape]`` stack of tensor ``name`` on the pool's device (do not write it).

        Resident placements return the stack itself (loading the pool on first use); ``disk``
        and ``host`` on CUDA a fresh copy.
        """
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
            for start, stop in split_ranges(_numel(self.shapes[name]), block)
        ]
        stacks = self.checkpoint_store.stream(requests)
        bases = (
            self.base_store.stream(requests)  # type: ignore[union-attr]
            if base
            else itertools.repeat(None)
        )
        for (name, start, stop), stack, base_slices in zip(requests, stacks, bases, strict=False):
            whole = start == 0 and stop == _numel(self.shapes[name])
            yield Piece(
                name, start, stop, whole, stack, None if base_slices is None else base_slices[0]
            )

    def resident_bytes(self) -> int:
        """Bytes held between trials by the stacks, the base and the Fishers."""
        stores = (self.checkpoint_store, self.base_store, self.fisher_store)
        fishers = sum(t.numel() * t.element_size() for t in (self._fishers or {}).values())
        return sum(s.resident_bytes() for s in stores if s is not None) + fishers

    # -- Fishers (methods with ``needs_fisher``) ----------------------------------------------

    @property
    def fisher_dtype(self) -> torch.dtype:
        """The Fishers' dtype: the pool's (float16's range is too small: bfloat16 then)."""
        return torch.bfloat16 if self.dtype == torch.float16 else self.dtype

    def load_fishers(
        self,
        fishers: Sequence[Mapping[str, torch.Tensor]],
        source: Mapping[str, Any] | None = None,
        records: Sequence[Mapping[str, str]] = (),
    ) -> CheckpointPool:
        """Hold each checkpoint's diagonal Fisher, given as tensors, as a ``[K, *shape]`` stack
        per tensor on the pool's device (Fishers computed without a cache to read them from).

        Args:
            fishers: one mapping per checkpoint, in pool order: tensor name -> its Fisher
                (the tensor's shape, any float dtype, on any device).
            source: JSON-able description of how they were computed (calibration data, N):
                kept as :attr:`fisher_source` for the model card.
            records: the calibration examples as JSON records, kept as
                :attr:`fisher_records` (an export writes them beside the merge).
        """
        if len(fishers) != len(self.names):
            raise UserError(
                f"checkpoint pool: {len(fishers)} Fishers for {len(self.names)} checkpoints"
            )
        stacks = {}
        for name, shape in self.shapes.items():
            stack = torch.empty((len(fishers), *shape), dtype=self.fisher_dtype, device=self.device)
            for i, fisher in enumerate(fishers):
                tensor = fisher.get(name)
                self._check_fisher(i, name, None if tensor is None else tuple(tensor.shape))
                stack[i].copy_(tensor)
            stacks[name] = stack
        self._set_fishers(stacks, None, source, records)
        return self

    def load_fisher_files(
        self,
        files: Sequence[Path],
        source: Mapping[str, Any] | None = None,
        records: Sequence[Mapping[str, str]] = (),
        *,
        threads: int | None = None,
    ) -> CheckpointPool:
        """Read each checkpoint's Fisher from its safetensors file (the study's cache) into a
        store of the pool's placement (:mod:`search.engine.placement`): ``device`` and ``host``
        hold them like the checkpoints' stacks, ``disk`` reads them from the files' memory maps
        each trial; the values handed to a merge are the same bits in every placement.

        Raises:
            UserError: a file is unreadable or truncated, or lacks a tensor of the pool or has
                it in another shape (one line naming the checkpoint and the tensor).
        """
        if len(files) != len(self.names):
            raise UserError(
                f"checkpoint pool: {len(files)} Fisher files for {len(self.names)} checkpoints"
            )
        tables = [read_table(Path(f))[0] for f in files]
        for i, table in enumerate(tables):
            for name in self.shapes:
                self._check_fisher(i, name, table[name].shape if name in table else None)
        store = build_store(
            self.placement,
            tables,
            self.shapes,
            self.fisher_dtype,
            self.device,
            block_bytes=self._block_bytes,
        )
        n = threads or min(LOAD_THREADS, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="fisher-load") as executor:
            store.load(executor if n > 1 else None)
        self._set_fishers(None, store, source, records)
        return self

    def _check_fisher(self, i: int, name: str, shape: tuple[int, ...] | None) -> None:
        expected = self.shapes[name]
        if shape is None or tuple(shape) != expected:
            got = "missing" if shape is None else f"shape {list(shape)}"
            raise UserError(
                f"checkpoint pool: Fisher of {self.names[i]} for tensor {name} is {got} "
                f"(expected shape {list(expected)})"
            )

    def _set_fishers(
        self,
        stacks: dict[str, torch.Tensor] | None,
        store: TensorStore | None,
        source: Mapping[str, Any] | None,
        records: Sequence[Mapping[str, str]],
    ) -> None:
        if self.fisher_store is not None:
            self.fisher_store.close()
        self._fishers, self.fisher_store = stacks, store
        self.fisher_source = dict(source) if source is not None else None
        self.fisher_records = tuple(dict(r) for r in records)

    @property
    def has_fishers(self) -> bool:
        return self._fishers is not None or self.fisher_store is not None

    def fisher_stack(self, name: str) -> torch.Tensor:
        """The ``[K, *shape]`` stack of the checkpoints' Fishers of tensor ``name`` on the
        pool's device (resident: the stack itself; ``disk``, ``host`` on CUDA: a fresh copy)."""
        if self.fisher_store is not None:
            return self.fisher_store.get(name)
        if self._fishers is None:
            raise UserError("checkpoint pool: no Fishers loaded (see CheckpointPool.load_fishers)")
        return self._fishers[name]

    def model_bytes(self) -> int:
        """Bytes of one model in the pool dtype."""
        size = torch.tensor([], dtype=self.dtype).element_size()
        return sum(_numel(s) for s in self.shapes.values()) * size

    def sizes(self, *, needs_base: bool, linear: bool) -> PoolSizes:
        """One worker's memory needs for a method that reads the base (``needs_base``) or not
        and is linear-form (``linear``: merged block by block) or not.

        Working buffers (an estimate): two streamed blocks per store for linear-form methods
        (a block holds at most the largest tensor's slices); for the others, the largest
        tensor's K (+ 1) slices as a buffer plus four float32 temporaries of that size (task
        vectors, masks, weighted terms).
        """
        return _sizes(
            self.shapes, len(self.names), self.dtype, needs_base=needs_base, linear=linear
        )

    def close(self) -> None:
        """Release the stores' files, buffers and page locks (the pool is unusable after)."""
        for store in (self.checkpoint_store, self.base_store, self.fisher_store):
            if store is not None:
                store.close()

    # -- layer groups --------------------------------------------------------------------------

    def group_of(self, name: str, n_groups: int) -> int:
        """Layer group of tensor ``name`` when the blocks are split into ``n_groups`` groups.

        Block ``i`` of ``L`` goes to group ``i·G // L`` (contiguous, sizes differ by at most
        one); embeddings go with group 0; everything else outside the blocks (final norm,
        lm_head) with group ``G − 1``.
        """
        if n_groups <= 1:
            return 0
        if m := _LAYER_RE.search(name):
            return int(m.group(1)) * n_groups // self.n_layers
        return 0 if _EMBED_RE.search(name) else n_groups - 1

    # -- identity and model ----------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of the inputs, per checkpoint and base: name, safetensors bytes,
        sha256 of the headers, XXH3-128 of every byte of the files (:meth:`content_digests`)."""
        known = self.content_digests(base=True)
        return {
            "checkpoints": [c.fingerprint(known) for c in self._checkpoints],
            "base": self._base.fingerprint(known) if self._base else None,
        }

    @property
    def stamps(self) -> dict[Path, FileStamp]:
        """Every checkpoint and base file's stamp (size, mtime, ctime, inode) taken at open."""
        out: dict[Path, FileStamp] = {}
        for c in (*self._checkpoints, *([self._base] if self._base else [])):
            out.update(c.stamps)
        return out

    def content_digests(self, executor: Any = None, *, base: bool = True) -> dict[Path, str]:
        """XXH3-128 of every checkpoint file (and the base's with ``base``): from the digest cache
        when a file's stamp is unchanged since it was hashed, else read and hashed (in
        ``executor``'s threads, else up to :data:`LOAD_THREADS`); ``UserError`` naming a file
        that changed since the pool was opened (:mod:`search.engine.digests`)."""
        members = (*self._checkpoints, *([self._base] if self._base and base else []))
        files = [f for c in members for f in c.files if f not in self._digests]
        if files:
            stamps = self.stamps
            cache = self._digest_cache or DigestCache()
            if executor is None and len(files) > 1:
                n = min(LOAD_THREADS, os.cpu_count() or 1, len(files))
                with ThreadPoolExecutor(max_workers=n, thread_name_prefix="pool-hash") as pool:
                    self._digests.update(digests(files, stamps, cache, pool))
            else:
                self._digests.update(digests(files, stamps, cache, executor))
        return dict(self._digests)

    def check_unchanged(self) -> None:
        """``UserError`` naming the first checkpoint file whose size, mtime, ctime or inode
        changed since the pool was opened (one ``stat`` per file): what a worker runs before
        each trial, so a checkpoint rewritten during a study is never scored unnoticed."""
        changed = changed_files(self.stamps)
        if changed:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise UserError(changed[0] + more)

    def tokenizer_path(self) -> Path | None:
        """Folder the tokenizer comes from: the base if it has tokenizer files, else the first."""
        for folder in (self.base_path, self.paths[0]):
            if folder is not None and any((folder / f).is_file() for f in TOKENIZER_FILES):
                return folder
        return None

    def load_model(self, *, tokenizer: bool = True) -> tuple[Any, Any]:
        """One resident ``AutoModelForCausalLM`` (the reference's weights) and its tokenizer.

        The model is on ``device`` in ``dtype``, in eval mode;
        :func:`search.engine.materialize.materialize` overwrites its weights in place for every
        trial.
        The tokenizer comes from :meth:`tokenizer_path`; ``tokenizer=False`` skips it (``None``).
        """

        tok = None
        if tokenizer:
            tok_path = self.tokenizer_path()
            if tok_path is None:
                raise UserError(
                    f"{self.reference_path}: no tokenizer files in the base or the first checkpoint"
                )
            tok = AutoTokenizer.from_pretrained(str(tok_path))
        model = AutoModelForCausalLM.from_pretrained(str(self.reference_path), dtype=self.dtype)
        model.to(self.device).eval()
        return model, tok

    def __repr__(self) -> str:
        base = f", base={self.base_path.name}" if self.base_path else ""
        return (
            f"CheckpointPool({list(self.names)}{base}, device={self.device}, dtype={self.dtype}, "
            f"placement={self.placement})"
        )


# ---------------------------------------------------------------------------------------------
# Helpers


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch floating dtype from a name; ``UserError`` listing the names otherwise."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise UserError(f"dtype: expected a floating dtype, got {dtype}")
    key = str(dtype).removeprefix("torch.")
    if key not in DTYPES:
        raise UserError(
            f"dtype: expected one of float32, bfloat16, float16, float64, got {dtype!r}"
        )
    return DTYPES[key]


def _check_listed_once(checkpoints: Sequence[str | Path]) -> None:
    """``UserError`` when two entries of the list are the same folder (after resolving)."""
    seen: dict[Path, str | Path] = {}
    for entry in checkpoints:
        real = Path(entry).resolve()
        if real in seen:
            raise UserError(
                f"checkpoints: {entry} is listed twice (also as {seen[real]}, the same folder "
                f"{real}); list each checkpoint once"
            )
        seen[real] = entry


def _check_distinct_content(opened: Sequence[Checkpoint], cache: DigestCache) -> None:
    """``UserError`` when two checkpoints hold the same bytes (a copy listed beside its
    original). Only checkpoints alike in size, headers and a data sample are hashed in full."""
    alike: dict[tuple[int, str, str], list[Checkpoint]] = {}
    for c in opened:
        alike.setdefault((c.n_bytes, c.header_sha256, c.sample_sha256()), []).append(c)
    for group in alike.values():
        if len(group) < 2:
            continue
        seen: dict[str, Checkpoint] = {}
        for c in group:
            known = digests(c.files, c.stamps, cache)
            content = c.fingerprint(known)["content_xxh3_128"]
            if content in seen:
                raise UserError(
                    f"checkpoints: {c.path} holds the same weights as {seen[content].path} "
                    "(identical files); list each checkpoint once"
                )
            seen[content] = c


def _sizes(
    shapes: dict[str, tuple[int, ...]],
    n_checkpoints: int,
    dtype: torch.dtype,
    *,
    needs_base: bool,
    linear: bool,
) -> PoolSizes:
    k = n_checkpoints + int(needs_base)
    item = torch.tensor([], dtype=dtype).element_size()
    model = sum(_numel(s) for s in shapes.values()) * item
    largest = max((_numel(s) for s in shapes.values()), default=0)
    if linear:  # two block buffers per store, no larger than the largest tensor's slices
        base = min(BLOCK_BYTES, largest * item) if needs_base else 0
        work = 2 * (min(BLOCK_BYTES, n_checkpoints * largest * item) + base)
    else:
        work = k * largest * (item + 4 * 4)
    return PoolSizes(k * model, model, work)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
