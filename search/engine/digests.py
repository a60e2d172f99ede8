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

import xxhash

from search.errors import UserError

_CHUNK = 8 * 2**20  # bytes hashed per read
CACHE_FILE = "digests-xxh3.json"


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


def file_digest(file: Path) -> str:
    """XXH3-128 of every byte of ``file`` (hex); ``UserError`` when it changes while read."""
    before = FileStamp.of(file)
    digest = xxhash.xxh3_128()
    with open(file, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if FileStamp.of(file) != before:
        raise UserError(f"{file}: changed while it was being read; run again once it is written")
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$MERGE_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/merge-search``, else ``~/.cache/…``."""
    if folder := os.environ.get("MERGE_SEARCH_CACHE"):
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "merge-search"


class DigestCache:
    """``{resolved path: (stamp, XXH3-128)}`` in a JSON file; thread-safe, saved atomically."""

    def __init__(self, folder: Path | None = None) -> None:
        self.file = (folder or default_cache_dir()) / CACHE_FILE
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        self._dirty = False
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.file.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self._entries = data

    def get(self, file: Path, stamp: FileStamp) -> str | None:
        with self._lock:
            entry = self._entries.get(str(file.resolve()))
        if isinstance(entry, dict) and entry.get("stamp") == asdict(stamp):
            return str(entry.get("xxh3_128"))
        return None

    def put(self, file: Path, stamp: FileStamp, digest: str) -> None:
        with self._lock:
            self._entries[str(file.resolve())] = {"stamp": asdict(stamp), "xxh3_128": digest}
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
    """XXH3-128 of each file, from ``cache`` when its stamp still matches, else hashed (in
    ``executor``'s threads) and cached.

    Raises:
        UserError: a file's stamp differs from ``stamps`` (it changed since the pool was
            opened), naming the file.
    """
    out: dict[Path, str] = {}
    todo: list[Path] = []
    for file in dict.fromkeys(files):
        check_stamp(file, stamps[file])
        known = cache.get(file, stamps[file])
        if known is not None:
            out[file] = known
        else:
            todo.append(file)

    def one(file: Path) -> str:
        sha = file_digest(file)
        check_stamp(file, stamps[file])
        cache.put(file, stamps[file], sha)
        return sha

    results = map(one, todo) if executor is None else executor.map(one, todo)
    out.update(zip(todo, results, strict=True))
    cache.save()
    return out


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
