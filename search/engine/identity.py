"""Which files a pool was opened on: stamps, content digests, fingerprints and change checks.

A study records the pool's :meth:`PoolIdentity.fingerprint` (header and content digests of every
file) and refuses a resume on other weights; a worker runs :meth:`PoolIdentity.check_unchanged`
(one ``stat`` per file) before each trial, so a checkpoint rewritten during a study is never
scored unnoticed. :func:`check_listed_once` and :func:`check_distinct_content` refuse a pool that
lists one checkpoint twice (by path, or as a copy of the same bytes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from search.engine.checkpoint import Checkpoint
from search.engine.digests import DigestCache, FileStamp, changed_files, digests
from search.errors import UserError

HASH_THREADS = 8  # files hashed at once (at most the CPU count)


class PoolIdentity:
    """The identity of a pool's checkpoint and base files (see the module docstring)."""

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        base: Checkpoint | None,
        digest_cache: DigestCache | None = None,
    ) -> None:
        self._checkpoints = tuple(checkpoints)
        self._base = base
        # whole-file XXH3-128 of every checkpoint file (search.engine.digests), once known
        self._digests: dict[Path, str] = {}
        self._digest_cache = digest_cache

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
        ``executor``'s threads, else up to :data:`HASH_THREADS`); ``UserError`` naming a file
        that changed since the pool was opened (:mod:`search.engine.digests`)."""
        members = (*self._checkpoints, *([self._base] if self._base and base else []))
        files = [f for c in members for f in c.files if f not in self._digests]
        if files:
            stamps = self.stamps
            cache = self._digest_cache or DigestCache()
            if executor is None and len(files) > 1:
                n = min(HASH_THREADS, os.cpu_count() or 1, len(files))
                with ThreadPoolExecutor(max_workers=n, thread_name_prefix="pool-hash") as pool:
                    self._digests.update(digests(files, stamps, cache, pool))
            else:
                self._digests.update(digests(files, stamps, cache, executor))
        return dict(self._digests)

    def check_unchanged(self) -> None:
        """``UserError`` naming the first checkpoint file whose size, mtime, ctime or inode
        changed since the pool was opened (one ``stat`` per file)."""
        changed = changed_files(self.stamps)
        if changed:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise UserError(changed[0] + more)


def check_listed_once(checkpoints: Sequence[str | Path]) -> None:
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


def check_distinct_content(opened: Sequence[Checkpoint], cache: DigestCache) -> None:
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
