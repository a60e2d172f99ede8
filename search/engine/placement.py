"""Where a pool's tensors live between trials, and how one tensor's K slices reach the device.

A placement is a :class:`TensorStore`: K members' versions of every tensor ("a pool's worth": the
K checkpoints; the base, as a store of one; or per-checkpoint statistics such as diagonal Fisher
information), read from safetensors files and handed to the compute device one tensor, or one
block of a tensor, at a time. A store only moves data: every merge runs in
:mod:`search.engine.materialize` and :mod:`search.engine.kernels`, on whatever a store hands over.

- ``device``: ``[K, *shape]`` stacks resident on the compute device, handed over as they are (the
  fastest layout; memory: the stacks on the device).
- ``host``: the same stacks resident in host memory. On the CPU that is the ``device`` placement
  (the same memory; the same code). On CUDA the stacks live in one page-locked allocation
  (``cudaHostRegister``: torch's pinned allocator rounds each allocation up to a power of two) and
  every trial streams them to the device: blocks of at most ``block`` elements per slice are
  copied on a side stream into one of two device buffers while the merge of the previous block
  runs on the current stream (double buffering, CUDA events order the two), so the merge keeps
  the GPU's fused kernel and is bound by the host→device copy (``bench/merge_speed.py``).
- ``disk``: no resident copy: each trial reads every tensor from the safetensors files' memory
  maps (:class:`~search.engine.files.MappedFiles`, opened once for the store's life; the page
  cache serves repeats), block by block into two reused buffers, the next block read by a thread
  while the current one is merged (on CUDA: pinned buffers streamed as above), and hands the
  pages read back to the page cache, so the process holds one model plus buffers however large
  the pool.

Blocks: a linear-form merge (``linear``, ``task_arithmetic``) is elementwise, so the streaming
placements hand it ``[K, block]`` column blocks of the flattened tensor; the fused kernels give the
same bits per element whatever the block (blocks start at multiples of :data:`ALIGN` elements,
buffers are fresh allocations: the same alignment as a resident stack). Other methods need the
whole tensor (TIES's top-k, slerp's norms): their requests cover it, so their transient memory is
one tensor's K slices.

Contract of every store (checked for each placement in ``tests/search/engine/test_placement.py``):

- values are the members' tensors cast to the store's dtype, bit for bit the same in every
  placement, so a plan merges to the same bits whatever the placement;
- :meth:`TensorStore.get` returns a contiguous ``[K, *shape]`` tensor on the compute device that
  the caller may keep (a resident stack or a fresh copy) but must not write;
- :meth:`TensorStore.stream` yields, for each request ``(name, start, stop)`` in order, the K
  slices of the flattened tensor's elements ``[start, stop)`` on the compute device: ``[K,
  *shape]`` when the request covers the whole tensor, else ``[K, stop - start]``; a yielded tensor
  may be a reused buffer, valid until the next one is requested (or another stream of the same
  store starts); the caller must not write it.

:func:`choose_placement` is the ``auto`` rule: ``device`` when the stacks, the model and a trial's
working buffers fit the device's free memory with a margin, else ``host`` when the stacks fit the
host's available memory (CUDA only), else ``disk``; :func:`place_workers` applies it with the
memory measured for the workers of one host.
"""

from __future__ import annotations

import math
import warnings
import weakref
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import torch

from search.engine.files import STORAGE_BYTES, MappedFiles, TensorInfo, copy_serial

PLACEMENTS = ("auto", "device", "host", "disk")
ALIGN = 64  # elements: block starts and stack offsets are multiples of this (>= 64-byte lines)
BLOCK_BYTES = 32 * 2**20  # K slices of one streamed block: small against a model, large per copy
MARGIN = 0.15  # of free memory kept for activations, the allocator's slack and other processes
GB = 1e9

Request = tuple[str, int, int]  # (tensor name, first element, end element) of the flat tensor


def split_ranges(numel: int, block: int | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``numel`` elements in blocks of ``block`` (None: one)."""
    if block is None or numel <= block:
        return [(0, numel)]
    return [(s, min(numel, s + block)) for s in range(0, numel, block)]


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


class TensorStore(ABC):
    """K members' tensors by name, handed to the compute device (the contract: module docstring).

    Args:
        members: per member, its tensor table ``{name: TensorInfo}`` (from
            :func:`search.engine.files.read_table`); every member has every name in ``shapes``.
        shapes: ``{name: shape}``, the order tensors are stored in.
        dtype: the dtype handed over (members' files may differ; values are cast on read).
        device: the compute device.
        block_bytes: bytes of the K slices of one streamed block.
    """

    placement: ClassVar[str]

    def __init__(
        self,
        members: Sequence[Mapping[str, TensorInfo]],
        shapes: Mapping[str, tuple[int, ...]],
        dtype: torch.dtype,
        device: torch.device,
        *,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        if not members:
            raise ValueError("a tensor store needs at least one member")
        self.members = tuple(members)
        self.k = len(self.members)
        self.shapes = dict(shapes)
        self.dtype = dtype
        self.device = device
        item = torch.empty((), dtype=dtype).element_size()
        self.block = max(ALIGN, block_bytes // (self.k * item) // ALIGN * ALIGN)

    def load(self, executor: Executor | None = None) -> None:  # noqa: B027 - optional hook
        """Get ready for trials (resident stores read every file, in ``executor``'s threads)."""

    @abstractmethod
    def get(self, name: str) -> torch.Tensor:
        """``[K, *shape]`` of tensor ``name`` on the compute device; keep it, do not write it."""

    @abstractmethod
    def stream(self, requests: Sequence[Request]) -> Iterator[torch.Tensor]:
        """Each request's K slices on the compute device, in order (valid until the next)."""

    def block_elems(self) -> int | None:
        """Block size for elementwise merges, ``None`` when whole tensors cost nothing more."""
        return self.block

    def resident_bytes(self) -> int:
        """Bytes this store holds between trials (host or device)."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files, buffers and page locks."""

    def _shaped(self, flat: torch.Tensor, request: Request) -> torch.Tensor:
        """``flat`` (K·w elements) as the request's view: ``[K, *shape]`` when whole."""
        name, start, stop = request
        shape = self.shapes[name]
        if start == 0 and stop == math.prod(shape):
            return flat.view(self.k, *shape)
        return flat.view(self.k, stop - start)


# ------------------------------------------------------------------------- resident: device/host


class ResidentStore(TensorStore):
    """``device`` and ``host``: ``[K, *shape]`` stacks read once, resident between trials."""

    def __init__(self, placement: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.placement = placement  # type: ignore[misc]
        # On the CPU, host memory is the device's memory: "host" is "device" there.
        self.on_device = placement == "device" or self.device.type == "cpu"
        self._stacks: dict[str, torch.Tensor] | None = None
        self._flat: torch.Tensor | None = None  # the one page-locked allocation (host on CUDA)
        self._unlock: weakref.finalize | None = None  # unregisters it, at close or collection

    def load(self, executor: Executor | None = None) -> None:
        if self._stacks is not None:
            return
        stacks = self._allocate()
        maps = MappedFiles()
        jobs: dict[tuple[int, object], list[str]] = {}
        for i, table in enumerate(self.members):
            for name in self.shapes:
                jobs.setdefault((i, table[name].file), []).append(name)
        for _, file in jobs:
            maps.open(file)  # type: ignore[arg-type]

        def read(job: tuple[int, object]) -> None:
            i, _ = job
            for name in jobs[job]:
                info = self.members[i][name]
                dst, src = stacks[name][i], maps.view(info, name)
                if dst.device.type == "cpu":
                    copy_serial(dst, src)
                else:
                    dst.copy_(src)
                maps.release(info)

        try:
            if executor is None:
                for job in jobs:
                    read(job)
            else:
                for future in [executor.submit(read, job) for job in jobs]:
                    future.result()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        finally:
            maps.close()
        self._stacks = stacks

    def _allocate(self) -> dict[str, torch.Tensor]:
        if self.on_device:
            return {
                n: torch.empty((self.k, *s), dtype=self.dtype, device=self.device)
                for n, s in self.shapes.items()
            }
        offsets, total = {}, 0
        for name, shape in self.shapes.items():
            offsets[name] = total
            total += -(-self.k * math.prod(shape) // ALIGN) * ALIGN
        self._flat = flat = torch.empty(total, dtype=self.dtype)
        if _pin(flat):  # the finalizer holds ``flat`` until it has been unregistered
            self._unlock = weakref.finalize(self, _unpin, flat)
        return {
            n: flat[o : o + self.k * math.prod(s)].view(self.k, *s)
            for (n, s), o in zip(self.shapes.items(), offsets.values(), strict=True)
        }

    def stacks(self) -> dict[str, torch.Tensor]:
        if self._stacks is None:
            self.load()
        return self._stacks  # type: ignore[return-value]

    def get(self, name: str) -> torch.Tensor:
        stack = self.stacks()[name]
        return stack if self.on_device else stack.to(self.device)

    def stream(self, requests: Sequence[Request]) -> Iterator[torch.Tensor]:
        stacks = self.stacks()
        if self.on_device:
            for name, start, stop in requests:
                stack = stacks[name]
                whole = start == 0 and stop == stack[0].numel()
                yield stack if whole else stack.view(self.k, -1)[:, start:stop]
            return

        def rows(request: Request, staging: torch.Tensor | None) -> list[torch.Tensor]:
            name, start, stop = request
            flat = stacks[name].view(self.k, -1)
            return [flat[r, start:stop] for r in range(self.k)]

        yield from _stream_to_cuda(self, requests, rows, pinned=False)

    def block_elems(self) -> int | None:
        return None if self.on_device else self.block

    def resident_bytes(self) -> int:
        if self._stacks is None:
            return 0
        if self._flat is not None:
            return self._flat.numel() * self._flat.element_size()
        return sum(t.numel() * t.element_size() for t in self._stacks.values())

    def close(self) -> None:
        if self._unlock is not None:
            self._unlock()
        self._stacks = None
        self._flat = None
        self._unlock = None


def _pin(flat: torch.Tensor) -> bool:
    """Page-lock ``flat`` for asynchronous copies (CUDA's host register); warn if refused."""
    if not torch.cuda.is_available() or flat.numel() == 0:
        return False
    nbytes = flat.numel() * flat.element_size()
    status = int(torch.cuda.cudart().cudaHostRegister(flat.data_ptr(), nbytes, 0))
    if status != 0:
        warnings.warn(
            f"pool: could not page-lock {nbytes / GB:.2f} GB of host memory (cudaError {status}); "
            "host-to-device copies will be synchronous",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def _unpin(flat: torch.Tensor) -> None:
    torch.cuda.cudart().cudaHostUnregister(flat.data_ptr())


# ----------------------------------------------------------------------------------------- disk


class DiskStore(TensorStore):
    """``disk``: nothing resident; every read goes through the files' memory maps.

    Args:
        keep_open: keep one ``safe_open`` handle per file for the store's life (default); with
            ``False`` every tensor read opens and closes its file (2-3x slower, measured by
            ``bench/merge_speed.py``).
        prefetch: on the CPU, read block ``i + 1`` in a reader thread while the caller merges
            block ``i`` (two block buffers instead of one; measured faster on 2 busy cores: 2.6
            s against 3.1 s per trial of the bench's default pool).
    """

    placement = "disk"

    def __init__(self, *args, keep_open: bool = True, prefetch: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keep_open = keep_open
        self.prefetch = prefetch
        self._maps = MappedFiles()
        self._buffers: list[torch.Tensor] = []  # CPU block buffers, reused by each stream

    def load(self, executor: Executor | None = None) -> None:
        if self.keep_open:
            for table in self.members:
                for file in dict.fromkeys(info.file for info in table.values()):
                    self._maps.open(file)

    def _fill(self, request: Request, dst: torch.Tensor) -> None:
        """Member rows of ``request`` into ``dst`` ([K, w] on the CPU), pages handed back."""
        name, start, stop = request
        for r, table in enumerate(self.members):
            info = table[name]
            maps = self._maps if self.keep_open else MappedFiles()
            copy_serial(dst[r], maps.view(info, name).view(-1)[start:stop])
            item = STORAGE_BYTES[info.dtype]
            maps.release(info, start * item, stop * item)
            if not self.keep_open:
                maps.close()

    def get(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        out = torch.empty((self.k, math.prod(shape)), dtype=self.dtype)
        self._fill((name, 0, math.prod(shape)), out)
        return out.view(self.k, *shape).to(self.device)

    def stream(self, requests: Sequence[Request]) -> Iterator[torch.Tensor]:
        if not requests:
            return
        if self.device.type == "cuda":

            def rows(request: Request, staging: torch.Tensor | None) -> list[torch.Tensor]:
                self._fill(request, staging)  # type: ignore[arg-type]
                return [staging.view(-1)]  # type: ignore[union-attr]

            yield from _stream_to_cuda(self, requests, rows, pinned=True)
            return
        width = max(stop - start for _, start, stop in requests)
        n_buffers = 2 if self.prefetch else 1
        if len(self._buffers) < n_buffers or self._buffers[0].numel() < self.k * width:
            self._buffers = [  # kept between trials: no allocator churn
                torch.empty(self.k * width, dtype=self.dtype) for _ in range(n_buffers)
            ]

        def fill(i: int) -> torch.Tensor:
            _, start, stop = requests[i]
            flat = self._buffers[i % n_buffers][: self.k * (stop - start)]
            self._fill(requests[i], flat.view(self.k, stop - start))
            return flat

        if not self.prefetch:
            for i, request in enumerate(requests):
                yield self._shaped(fill(i), request)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="disk-read") as reader:
            pending = reader.submit(fill, 0)
            for i, request in enumerate(requests):
                flat = pending.result()
                if i + 1 < len(requests):  # read block i + 1 while the caller merges block i
                    pending = reader.submit(fill, i + 1)
                yield self._shaped(flat, request)

    def close(self) -> None:
        self._maps.close()
        self._buffers = []


# ------------------------------------------------------------------------ streaming to a GPU


def _stream_to_cuda(
    store: TensorStore,
    requests: Sequence[Request],
    rows: Callable[[Request, torch.Tensor | None], list[torch.Tensor]],
    *,
    pinned: bool,
) -> Iterator[torch.Tensor]:
    """Host→device copies of each request's K slices, double-buffered against the caller's work.

    ``rows(request, staging)`` returns the CPU tensors whose concatenation is the request's ``[K,
    w]`` block (row-major); with ``pinned`` it first fills ``staging`` (a page-locked ``[K, w]``
    buffer, reused: its previous copy is waited for on the host). Block ``i + 1`` is copied on a
    side stream while the current stream runs the caller's work on block ``i``; events order a
    buffer's copy after the last use of its previous contents, and the use after the copy.
    """
    k, device = store.k, store.device
    width = max(stop - start for _, start, stop in requests)
    copy_stream = torch.cuda.Stream(device=device)
    compute = torch.cuda.current_stream(device)
    buffers = [torch.empty(k * width, dtype=store.dtype, device=device) for _ in range(2)]
    for buf in buffers:
        buf.record_stream(copy_stream)
    staging = (
        [torch.empty(k * width, dtype=store.dtype, pin_memory=True) for _ in range(2)]
        if pinned
        else [None, None]
    )
    copied: list[torch.cuda.Event | None] = [None, None]
    consumed: list[torch.cuda.Event | None] = [None, None]

    def issue(i: int) -> None:
        request = requests[i]
        j, w = i % 2, request[2] - request[1]
        host = None
        if pinned:
            if copied[j] is not None:
                copied[j].synchronize()  # the staging buffer's previous copy has left
            host = staging[j][: k * w].view(k, w)  # type: ignore[index]
        sources = rows(request, host)
        with torch.cuda.stream(copy_stream):
            if consumed[j] is not None:
                copy_stream.wait_event(consumed[j])
            offset = 0
            for src in sources:
                n = src.numel()
                buffers[j][offset : offset + n].copy_(src.reshape(-1), non_blocking=True)
                offset += n
            event = torch.cuda.Event()
            event.record(copy_stream)
            copied[j] = event

    issue(0)
    for i, request in enumerate(requests):
        j = i % 2
        if i + 1 < len(requests):
            issue(i + 1)
        compute.wait_event(copied[j])
        yield store._shaped(buffers[j][: k * (request[2] - request[1])], request)
        done = torch.cuda.Event()
        done.record(compute)
        consumed[j] = done


# ---------------------------------------------------------------------------- building, auto

STORES: dict[str, Callable[..., TensorStore]] = {
    "device": lambda *a, **kw: ResidentStore("device", *a, **kw),
    "host": lambda *a, **kw: ResidentStore("host", *a, **kw),
    "disk": DiskStore,
}


def build_store(
    placement: str,
    members: Sequence[Mapping[str, TensorInfo]],
    shapes: Mapping[str, tuple[int, ...]],
    dtype: torch.dtype,
    device: torch.device,
    **options,
) -> TensorStore:
    """A store of ``placement`` (``device``, ``host`` or ``disk``; resolve ``auto`` first)."""
    if placement not in STORES:
        raise ValueError(f"pool: expected one of {', '.join(STORES)}, got {placement!r}")
    return STORES[placement](members, shapes, dtype, device, **options)


@dataclass(frozen=True)
class PoolSizes:
    """What one worker needs, in bytes.

    Attributes:
        stacks: the resident stacks: K checkpoints (+ the base when the method reads it).
        model: the resident model.
        work: a trial's working buffers (see :func:`pool_sizes`).
    """

    stacks: int
    model: int
    work: int


@dataclass(frozen=True)
class PlacementChoice:
    """The placement used and the one line saying why (sizes and free memory)."""

    placement: str
    reason: str


def choose_placement(
    requested: str,
    sizes: PoolSizes,
    *,
    device_free: int | None,
    host_available: int | None,
    per_device: int = 1,
    per_host: int = 1,
) -> PlacementChoice:
    """The ``auto`` rule (any other ``requested`` placement is kept, with the same sizes line).

    Args:
        sizes: one worker's needs.
        device_free: free bytes on the compute device; ``None`` for the CPU, whose memory is the
            host's (then ``device`` and ``host`` are the same placement).
        host_available: available host bytes (``MemAvailable``); ``None`` when unknown.
        per_device: workers sharing that device; ``per_host``: workers on this host.

    ``device`` when ``per_device × (stacks + model + work)`` fits ``(1 − MARGIN) ×`` the device's
    free memory; else (CUDA) ``host`` when ``per_host × stacks`` fits the host's and ``model +
    work`` the device's; else ``disk``.
    """
    keep = 1 - MARGIN
    resident = sizes.stacks + sizes.model + sizes.work
    sizes_text = (
        f"stacks {_size(sizes.stacks)} + model {_size(sizes.model)} + buffers "
        f"{_size(sizes.work)} per worker"
    )
    host_text = "unknown" if host_available is None else _size(host_available)
    if device_free is None:
        free_text = f"host memory available {host_text} for {per_host} worker(s)"
        fits_device = host_available is None or per_host * resident <= keep * host_available
        fits_host = fits_device
    else:
        free_text = (
            f"device free {_size(device_free)} for {per_device} worker(s), host available "
            f"{host_text} for {per_host}"
        )
        fits_device = per_device * resident <= keep * device_free
        fits_host = (
            host_available is None or per_host * sizes.stacks <= keep * host_available
        ) and per_device * (sizes.model + sizes.work) <= keep * device_free
    if requested != "auto":
        choice = requested
    elif fits_device:
        choice = "device"
    elif fits_host and device_free is not None:
        choice = "host"
    else:
        choice = "disk"
    if requested != "auto":
        return PlacementChoice(choice, f"pool: {choice} (requested): {sizes_text}")
    return PlacementChoice(
        choice, f"pool: {choice} (auto, margin {MARGIN:.0%}): {sizes_text}; {free_text}"
    )


def place_workers(
    requested: str, sizes: PoolSizes, devices: Sequence[str], *, reserved_share: float = 0.0
) -> PlacementChoice:
    """The placement of local workers on ``devices`` (one entry per worker), decided once so
    every worker agrees: :func:`choose_placement` with the free memory measured now, for
    ``auto``: the least free of the GPUs used (this opens a CUDA context on each) shared by the
    workers on one GPU, and the host's available memory shared by all of them.

    ``reserved_share``: the share of each GPU's total memory that every worker on it leaves to
    another tenant started after this choice (vLLM's ``gpu_memory_utilization``): it is taken
    from the free memory before the pool is placed (:func:`free_after_reserve`)."""
    device_free = host = None
    if requested == "auto":
        counts = Counter(devices)
        frees = []
        for gpu in sorted(d for d in counts if d.startswith("cuda")):
            free, total = torch.cuda.mem_get_info(torch.device(gpu))
            frees.append(free_after_reserve(int(free), int(total), reserved_share, counts[gpu]))
        device_free = min(frees) if frees else None
        host = host_available_bytes()
    return choose_placement(
        requested,
        sizes,
        device_free=device_free,
        host_available=host,
        per_device=max(Counter(devices).values()),
        per_host=len(devices),
    )


def free_after_reserve(free: int, total: int, share: float, workers: int) -> int:
    """A device's free bytes once ``workers`` tenants took ``share`` of its ``total`` each
    (never below 0): what is left for the workers' pools and resident models."""
    return max(0, free - round(share * total * workers))


def _size(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= GB / 10 else f"{n / 1e6:.1f} MB"


def host_available_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` (Linux), else ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def device_free_bytes(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (``torch.cuda.mem_get_info``); ``None`` for the CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def pool_sizes(
    shapes: Mapping[str, tuple[int, ...]],
    n_checkpoints: int,
    dtype: torch.dtype,
    *,
    needs_base: bool,
    linear: bool,
) -> PoolSizes:
    """One worker's memory needs for a pool of ``n_checkpoints`` models of ``shapes``, for a
    method that reads the base (``needs_base``) or not and is linear-form (``linear``: merged
    block by block) or not.

    Working buffers (an estimate): two streamed blocks per store for linear-form methods (a
    block holds at most the largest tensor's slices); for the others, the largest tensor's
    K (+ 1) slices as a buffer plus four float32 temporaries of that size (task vectors, masks,
    weighted terms).
    """
    k = n_checkpoints + int(needs_base)
    item = torch.tensor([], dtype=dtype).element_size()
    model = sum(math.prod(s) for s in shapes.values()) * item
    largest = max((math.prod(s) for s in shapes.values()), default=0)
    if linear:  # two block buffers per store, no larger than the largest tensor's slices
        base = min(BLOCK_BYTES, largest * item) if needs_base else 0
        work = 2 * (min(BLOCK_BYTES, n_checkpoints * largest * item) + base)
    else:
        work = k * largest * (item + 4 * 4)
    return PoolSizes(k * model, model, work)
