"""Safetensors files: headers checked once, tensors read through the files' memory maps.

:func:`read_table` parses one file's header and checks it against the file before any tensor is
read: every entry is a floating-point tensor whose ``data_offsets`` hold exactly ``shape ×
dtype size`` bytes and end inside the file. A file cut short (a failed copy or download: the
header intact, the data not) is refused there, with one :class:`~search.errors.UserError` line
naming the file and the first tensor that does not fit.

:class:`MappedFiles` reads tensors with ``safetensors.safe_open``, which maps the whole file
(private, read-only use) and returns each tensor as a view of that map, so a read is served by
the page cache. Handles stay open for the owner's life (reopening parses the header and maps the
file again for every tensor: several times slower per trial, see ``bench/merge_speed.py``).
Pages touched through a map stay in the process (they count in its RSS) until the map is closed;
:meth:`MappedFiles.release` hands the pages of one tensor back (``madvise(MADV_DONTNEED)``; the
page cache keeps them, a later read maps them again), which bounds what reading a pool larger
than memory keeps resident. safetensors has no call for that, hence the few lines here.

:func:`copy_serial` copies a tensor out of a map on the calling thread alone: torch's own
``copy_`` splits a large copy over its intra-op (OpenMP) threads, and one fork/join per copy
made reading the K files ~15x slower on an oversubscribed host (2 cores, load ~4: 5.1 s against
0.35 s for one bench pool); a single-threaded copy is as fast on an idle host and leaves the
parallelism to the loader's threads.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.errors import UserError

_MAX_HEADER = 100 * 2**20  # larger "header lengths" mean the file is not safetensors
STORAGE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_MADV_DONTNEED = 4  # Linux
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_GRAIN = 32768  # elements: torch copies a slice this small on the calling thread alone
# A read maps more than it touches: fault-around, and large page-cache folios (ext4 on Linux
# 6.16+ maps up to 2 MiB at a time): a release reaches this far beyond both ends of its range.
_SLACK = 2 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it looks like, from the safetensors header.

    ``start``/``stop``: the absolute byte range of its data in ``file``.
    """

    file: Path
    shape: tuple[int, ...]
    dtype: str
    start: int = 0
    stop: int = 0


def read_header(file: Path) -> tuple[dict[str, Any], bytes]:
    """The parsed safetensors header of ``file`` and its raw bytes; ``UserError`` if unreadable."""
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            size = file.stat().st_size
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length <= 0 or length > _MAX_HEADER or length > size - 8:
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            raw = f.read(length)
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (OSError, ValueError) as exc:
        raise UserError(f"{file}: unreadable safetensors header ({exc})") from None
    return header, raw


def read_table(file: Path) -> tuple[dict[str, TensorInfo], bytes]:
    """``{name: TensorInfo}`` of one file, in data order, checked against the file; raw header.

    Raises:
        UserError: unreadable header, a malformed or non-floating-point entry, or a tensor whose
            bytes do not match its shape and dtype or lie past the end of the file (truncated).
    """
    header, raw = read_header(file)
    size = file.stat().st_size
    data_start = 8 + len(raw)
    entries = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape, offsets = _entry_fields(file, name, entry)
        entries.append((offsets[0], name, entry["dtype"], shape, offsets))
    table: dict[str, TensorInfo] = {}
    for _, name, dtype, shape, (begin, end) in sorted(entries):
        if dtype not in STORAGE_BYTES:
            raise UserError(
                f"{file}: tensor {name} has dtype {dtype}; only floating-point tensors can be "
                "merged"
            )
        expected = math.prod(shape) * STORAGE_BYTES[dtype]
        if end - begin != expected:
            raise UserError(
                f"{file}: tensor {name}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
                f"but shape {list(shape)} in {dtype} needs {expected}"
            )
        if data_start + end > size:
            raise UserError(
                f"{file}: tensor {name} ends at byte {data_start + end} but the file has {size} "
                "bytes (truncated: copy or download it again)"
            )
        table[name] = TensorInfo(file, shape, dtype, data_start + begin, data_start + end)
    return table, raw


def _entry_fields(file: Path, name: str, entry: Any) -> tuple[tuple[int, ...], tuple[int, int]]:
    """``(shape, data_offsets)`` of a header entry; ``UserError`` when malformed."""
    try:
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        entry["dtype"]
        ok = all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end)) and begin <= end
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(
            f"{file}: tensor {name}: malformed header entry (expected dtype, shape and "
            f"data_offsets [begin, end]), got {json.dumps(entry)[:120]}"
        )
    return shape, (begin, end)


def copy_serial(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` on the calling thread only (CPU tensors, contiguous, same size).

    The same dtype is one ``numpy.copyto`` of the bytes (a memcpy that releases the GIL); a cast
    goes through torch's ``copy_`` (round to nearest even, as everywhere) in slices too small for
    its intra-op threads.
    """
    d, s = dst.reshape(-1), src.reshape(-1)
    if d.dtype == s.dtype:
        np.copyto(d.view(torch.uint8).numpy(), s.view(torch.uint8).numpy())
        return
    for start in range(0, d.numel(), _GRAIN):
        d[start : start + _GRAIN].copy_(s[start : start + _GRAIN])


class MappedFiles:
    """Open ``safe_open`` handles by file, and the address range each file is mapped at.

    Not thread-safe to open: call :meth:`open` for every file first (single-threaded), then
    :meth:`view` and :meth:`release` may run from several threads.
    """

    def __init__(self) -> None:
        self._handles: dict[Path, Any] = {}
        self._spans: dict[Path, tuple[int, int, int] | None] = {}
        self._libc: Any = None

    def open(self, file: Path) -> None:
        """Map ``file`` (no-op when already open)."""
        if file in self._handles:
            return
        from safetensors import safe_open

        handle = safe_open(str(file), framework="pt", device="cpu")
        self._handles[file] = handle
        names = list(handle.keys())
        self._spans[file] = _mapping_span(handle.get_tensor(names[0]), file) if names else None

    def view(self, info: TensorInfo, name: str) -> torch.Tensor:
        """Tensor ``name`` of ``info.file`` on the CPU, a view of the file's map (do not write)."""
        self.open(info.file)
        return self._handles[info.file].get_tensor(name)

    def release(self, info: TensorInfo, start: int = 0, stop: int | None = None) -> None:
        """Drop the pages of bytes ``[start, stop)`` of the tensor's data from this process.

        ``start``/``stop`` are relative to the tensor's data (default: all of it). The range is
        widened by 2 MiB on both sides (what a read maps around itself: fault-around, large
        page-cache folios) and clamped to the file's map: pages of a neighbouring block are
        simply mapped again from the page cache when it is read. No-op where the map's address
        range is unknown (not Linux, or safetensors copied the data).
        """
        span = self._spans.get(info.file)
        if span is None:
            return
        base, lo, hi = span
        first = base + info.start + start
        last = base + info.start + (info.stop - info.start if stop is None else stop)
        first, last = first - _SLACK, last + _SLACK
        begin = max(lo, first - first % _PAGE)
        end = min(hi, last + (-last) % _PAGE)
        if end > begin:
            if self._libc is None:
                self._libc = ctypes.CDLL(None, use_errno=True)
                self._libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            self._libc.madvise(begin, end - begin, _MADV_DONTNEED)

    def close(self) -> None:
        """Close every handle (unmaps the files once no view of them is alive)."""
        self._handles.clear()
        self._spans.clear()


def _mapping_span(view: torch.Tensor, file: Path) -> tuple[int, int, int] | None:
    """``(address of the file's byte 0, start, end of its map)`` from ``/proc/self/maps``.

    Only a map of exactly this file that contains the view qualifies, so a release can never
    touch memory that is not a page of this file.
    """
    if not sys.platform.startswith("linux"):
        return None
    ptr = view.data_ptr()
    target = str(file.resolve())
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= ptr < hi:
                    if len(parts) < 6 or parts[5].strip() != target:
                        return None
                    return lo - int(parts[2], 16), lo, hi
    except OSError:
        return None
    return None
