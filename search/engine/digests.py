"""Whole-file content digests of checkpoint files, cached by what ``stat`` says of the file.

A checkpoint's fingerprint covers every byte of its safetensors files with XXH3-128 (xxHash's
128-bit hash: it reads at memory speed, about 5x sha256 on this CPU, and accidental changes are
what it is for, not forgery): a tensor changed in the middle of a file, same size, is noticed.
Hashing costs a read of the pool (see ``bench/merge_speed.py``), so a digest is kept in a small
JSON cache keyed by the file's resolved path and its :class:`FileStamp` (size, mtime, ctime,
inode, device): any write to the file changes its mtime and ctime (the ctime cannot be set back
by a user), so a stamp that still matches means the bytes are the ones hashed. The cache lives in
``$MERGE_SEARCH_CACHE`` (a folder), else ``$XDG_CACHE_HOME/merge-search``, else
``~/.cache/merge-search``; a cache that cannot be read or written is simply not used (the files
are hashed again).

The same pass checks that every floating-point tensor holds finite values (:func:`scan_file`: the
safetensors header says where each tensor lies and its dtype; NaN and Inf are the values whose
exponent bits are all set): a checkpoint with a NaN or Inf weight (a diverged run) is refused in
one line naming the file and the tensor. The verdict is cached with the digest, so a cached
digest never skips the check; an entry cached without a verdict is read again.

:func:`changed_files` is the cheap check a worker runs before each trial: one ``stat`` per file
against the stamps taken when the pool was opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xxhash

from search.errors import UserError

_CHUNK = 8 * 2**20  # bytes hashed per read
CACHE_FILE = "digests-xxh3.json"

# safetensors float dtype -> (element bytes, exponent mask): all exponent bits set is NaN or Inf
# (float8 e4m3 has no Inf; its one NaN pattern per sign is all bits but the sign set)
_NONFINITE_MASKS: dict[str, tuple[int, int]] = {
    "F64": (8, 0x7FF0000000000000),
    "F32": (4, 0x7F800000),
    "F16": (2, 0x7C00),
    "BF16": (2, 0x7F80),
    "F8_E5M2": (1, 0x7C),
    "F8_E4M3": (1, 0x7F),
}
_UINTS = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}


@dataclass(frozen=True)
class FileStamp:
    """What ``os.stat`` says of a file; equal stamps mean the file was not written between."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, file: Path) -> FileStamp:
        st = os.stat(file)
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class FileScan:
    """What one read of a file found: its XXH3-128 and its first tensor holding NaN or Inf.

    Attributes:
        digest: XXH3-128 of every byte (hex).
        nonfinite: ``"<tensor> (NaN)"`` or ``"<tensor> (Inf)"`` for the first floating-point
            tensor (in file order) holding a non-finite value; ``None`` when all are finite.
    """

    digest: str
    nonfinite: str | None = None

    def check(self, file: Path) -> None:
        """``UserError`` naming ``file`` and the tensor when the file holds NaN or Inf."""
        if self.nonfinite is not None:
            tensor, kind = self.nonfinite.rsplit(" ", 1)
            raise UserError(
                f"{file}: tensor {tensor} holds {kind.strip('()')} values; a checkpoint with "
                "non-finite weights (a diverged run?) cannot be merged"
            )


def file_digest(file: Path) -> str:
    """XXH3-128 of every byte of ``file`` (hex); ``UserError`` when it changes while read."""
    return scan_file(file).digest


def scan_file(file: Path) -> FileScan:
    """Read ``file`` once: XXH3-128 of every byte and, for a ``.safetensors`` file, the first
    floating-point tensor holding NaN or Inf. ``UserError`` when it changes while read."""
    before = FileStamp.of(file)
    digest = xxhash.xxh3_128()
    finite = _FiniteCheck(file) if file.suffix == ".safetensors" else None
    with open(file, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if finite is not None:
                finite.update(chunk)
    if FileStamp.of(file) != before:
        raise UserError(f"{file}: changed while it was being read; run again once it is written")
    return FileScan(digest.hexdigest(), finite.found if finite is not None else None)


class _FiniteCheck:
    """Fed a safetensors file's bytes in order, finds its first tensor with NaN or Inf.

    The header (read beforehand) gives each tensor's byte range and dtype; each chunk's part
    of a floating-point tensor is viewed as unsigned integers and tested against the dtype's
    exponent mask. An element cut by a chunk's end is carried into the next chunk.
    """

    def __init__(self, file: Path) -> None:
        self.found: str | None = None
        self._ranges: list[tuple[int, int, str, int, int]] = []  # start, end, name, size, mask
        self._pos = 0  # file offset of the first byte in self._carry
        self._carry = b""
        try:
            with open(file, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n)) if 0 < n < 2**30 else {}
        except (OSError, ValueError):
            header = {}  # not readable as safetensors: opening the checkpoint says so
        start = 8 + n if header else 0
        for name, info in header.items() if isinstance(header, dict) else ():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            size_mask = _NONFINITE_MASKS.get(str(info.get("dtype")))
            offsets = info.get("data_offsets")
            if size_mask is None or not isinstance(offsets, list) or len(offsets) != 2:
                continue
            self._ranges.append((start + offsets[0], start + offsets[1], name, *size_mask))
        self._ranges.sort()

    def update(self, chunk: bytes) -> None:
        if self.found is not None or not self._ranges:
            return
        buf = self._carry + chunk if self._carry else chunk
        pos, end = self._pos, self._pos + len(buf)
        consumed = end
        while self._ranges and self._ranges[0][0] < end:
            begin, stop, name, size, mask = self._ranges[0]
            lo = max(begin, pos)
            hi = min(stop, end)
            hi = lo + (hi - lo) // size * size  # whole elements only
            values = np.frombuffer(
                buf, dtype=_UINTS[size], count=(hi - lo) // size, offset=lo - pos
            )
            exponent = values & np.asarray(mask, dtype=values.dtype)
            bad = exponent == mask
            if bad.any():
                # NaN has mantissa bits set, Inf none (float8 e4m3's all-ones pattern is NaN)
                mantissa = values[bad] & ~np.asarray(mask | (1 << (8 * size - 1)), values.dtype)
                nan = bool(mantissa.any()) or (size, mask) == (1, 0x7F)
                self.found = f"{name} ({'NaN' if nan else 'Inf'})"
                return
            if hi < stop:  # the tensor goes on in the next chunk
                consumed = hi
                break
            self._ranges.pop(0)
        self._carry = buf[consumed - pos :]
        self._pos = consumed


def default_cache_dir() -> Path:
    """``$MERGE_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/merge-search``, else ``~/.cache/…``."""
    if folder := os.environ.get("MERGE_SEARCH_CACHE"):
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "merge-search"


class DigestCache:
    """``{resolved path: (stamp, XXH3-128, finite verdict)}`` in a JSON file; thread-safe, saved
    atomically."""

    def __init__(self, folder: Path | None = None) -> None:
        self.file = (folder or default_cache_dir()) / CACHE_FILE
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        self._dirty = False
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.file.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self._entries = data

    def get(self, file: Path, stamp: FileStamp) -> FileScan | None:
        """The scan cached for ``file`` while its stamp is ``stamp`` (an entry without the finite
        verdict is no scan: the file is read again)."""
        with self._lock:
            entry = self._entries.get(str(file.resolve()))
        if (
            isinstance(entry, dict)
            and entry.get("stamp") == asdict(stamp)
            and "nonfinite" in entry
            and isinstance(entry.get("xxh3_128"), str)
        ):
            nonfinite = entry["nonfinite"]
            return FileScan(entry["xxh3_128"], nonfinite if isinstance(nonfinite, str) else None)
        return None

    def put(self, file: Path, stamp: FileStamp, scan: FileScan) -> None:
        with self._lock:
            self._entries[str(file.resolve())] = {
                "stamp": asdict(stamp),
                "xxh3_128": scan.digest,
                "nonfinite": scan.nonfinite,
            }
            self._dirty = True

    def save(self) -> None:
        """Write the cache (temp file + rename); silently skipped when the folder is not
        writable."""
        with self._lock:
            if not self._dirty:
                return
            text = json.dumps(self._entries, sort_keys=True)
            self._dirty = False
        with contextlib.suppress(OSError):
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".digests-", dir=self.file.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, self.file)
            except OSError:
                os.unlink(tmp)


def digests(
    files: Iterable[Path],
    stamps: Mapping[Path, FileStamp],
    cache: DigestCache,
    executor: Executor | None = None,
) -> dict[Path, str]:
    """XXH3-128 of each file, from ``cache`` when its stamp still matches, else read (in
    ``executor``'s threads: :func:`scan_file`) and cached with its finite verdict.

    Raises:
        UserError: a file's stamp differs from ``stamps`` (it changed since the pool was
            opened), naming the file; or a file holds NaN or Inf values, naming the file and
            the first such tensor.
    """
    scans: dict[Path, FileScan] = {}
    todo: list[Path] = []
    for file in dict.fromkeys(files):
        check_stamp(file, stamps[file])
        known = cache.get(file, stamps[file])
        if known is not None:
            scans[file] = known
        else:
            todo.append(file)

    def one(file: Path) -> FileScan:
        scan = scan_file(file)
        check_stamp(file, stamps[file])
        cache.put(file, stamps[file], scan)
        return scan

    results = map(one, todo) if executor is None else executor.map(one, todo)
    scans.update(zip(todo, results, strict=True))
    cache.save()
    for file, scan in scans.items():
        scan.check(file)
    return {file: scan.digest for file, scan in scans.items()}


def check_stamp(file: Path, stamp: FileStamp) -> None:
    """``UserError`` naming ``file`` when its stamp is no longer ``stamp``."""
    changed = changed_files({file: stamp})
    if changed:
        raise UserError(changed[0])


def changed_files(stamps: Mapping[Path, FileStamp]) -> list[str]:
    """One line per file whose size, mtime, ctime or inode changed since ``stamps`` were taken
    (or that is gone): the check a worker runs before each trial (a ``stat`` per file)."""
    lines = []
    for file, stamp in stamps.items():
        try:
            now = FileStamp.of(file)
        except OSError as exc:
            lines.append(f"{file}: gone since the pool was opened ({exc.strerror})")
            continue
        if now != stamp:
            what = [k for k, v in asdict(now).items() if v != asdict(stamp)[k]]
            lines.append(
                f"{file}: changed since the pool was opened ({', '.join(what)} differ); "
                "the merges would not be of the files the study scored"
            )
    return lines
