"""One Hugging Face checkpoint folder, opened: its config, tensor table and fingerprint.

:func:`open_checkpoint` reads ``config.json`` and the safetensors headers (one file, or the shards
of ``model.safetensors.index.json``), each checked against its file
(:func:`search.engine.files.read_table`); :func:`check_compatible` compares two folders'
architecture, tensor names and shapes. Every problem is one :class:`~search.errors.UserError`
line naming the folder or file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.engine.digests import FileStamp
from search.engine.files import TensorInfo, read_table
from search.engine.hub import model_name
from search.errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SAMPLE = 1 << 16  # bytes hashed from the start and the end of each file's data


@dataclass(frozen=True)
class Checkpoint:
    """One opened folder: its config, tensor table, header digest and its files' stamps (taken
    when the headers were read: :mod:`search.engine.digests`)."""

    name: str
    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    files: tuple[Path, ...]
    n_bytes: int
    header_sha256: str
    stamps: Mapping[Path, FileStamp] = field(default_factory=dict)

    def fingerprint(self, digests: Mapping[Path, str]) -> dict[str, Any]:
        """Name, bytes, header digest, and the XXH3-128 of every byte of its files
        (``digests``: file → digest; for one file the content digest is that file's own;
        shards: the sha256 of their ``name digest`` lines)."""
        if len(self.files) == 1:
            content = digests[self.files[0]]
        else:
            lines = "".join(f"{f.name} {digests[f]}\n" for f in self.files)
            content = hashlib.sha256(lines.encode()).hexdigest()
        return {
            "name": self.name,
            "bytes": self.n_bytes,
            "header_sha256": self.header_sha256,
            "content_xxh3_128": content,
            # kept so that studies recorded before content digests still compare (storage)
            "data_sample_sha256": self.sample_sha256(),
        }

    def sample_sha256(self) -> str:
        """sha256 of 64 KiB at each end of each file's data: a cheap first look for copies."""
        sample = hashlib.sha256()
        for file in self.files:
            with open(file, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                f.seek(8 + length)
                sample.update(f.read(_SAMPLE))
                f.seek(max(8 + length, file.stat().st_size - _SAMPLE))
                sample.update(f.read(_SAMPLE))
        return sample.hexdigest()


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Folder basenames (a hub snapshot's model name), with ``-2``, ``-3`` … appended to
    repeats."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        name = model_name(p)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def open_checkpoint(path: Path, name: str) -> Checkpoint:
    """Read and check one folder's ``config.json`` and safetensors headers (no tensor data)."""
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint folder not found")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{config_file}: missing (every checkpoint needs its config.json)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_file}: unreadable ({exc})") from None
    if (path / INDEX_FILE).is_file():
        files = _index_files(path)
    elif (path / SINGLE_FILE).is_file():
        files = {path / SINGLE_FILE: None}
    else:
        raise UserError(
            f"{path}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors folders are supported)"
        )
    tensors: dict[str, TensorInfo] = {}
    digest = hashlib.sha256()
    n_bytes = 0
    stamps: dict[Path, FileStamp] = {}
    for file, expected in files.items():
        if not file.is_file():
            raise UserError(f"{file}: missing (listed in {path / INDEX_FILE})")
        stamps[file] = FileStamp.of(file)
        table, raw = read_table(file)
        digest.update(raw)
        n_bytes += stamps[file].size
        tensors.update(table)
        for n in expected or ():
            if n not in table:
                raise UserError(f"{file}: tensor {n} listed in {INDEX_FILE} but not in the file")
    return Checkpoint(
        name, path, config, tensors, tuple(files), n_bytes, digest.hexdigest(), stamps
    )


def _index_files(path: Path) -> dict[Path, list[str]]:
    index_file = path / INDEX_FILE
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{index_file}: unreadable index ({exc})") from None
    files: dict[Path, list[str]] = {}
    for tensor, shard in weight_map.items():
        files.setdefault(path / shard, []).append(tensor)
    return dict(sorted(files.items()))


def check_compatible(ref: Checkpoint, other: Checkpoint) -> None:
    """``UserError`` unless ``other`` has ``ref``'s architecture, tensor names and shapes."""
    for key in ("model_type", "architectures"):
        if ref.config.get(key) != other.config.get(key):
            raise UserError(
                f"{other.path}: config.json {key} is {other.config.get(key)!r}, "
                f"{ref.path} has {ref.config.get(key)!r}"
            )
    for name, info in ref.tensors.items():
        mine = other.tensors.get(name)
        if mine is None:
            raise UserError(
                f"{other.path}: tensor {name} missing (shape {list(info.shape)} in {ref.path})"
            )
        if mine.shape != info.shape:
            raise UserError(
                f"{other.path}: tensor {name} has shape {list(mine.shape)}, "
                f"{ref.path} has {list(info.shape)}"
            )
    extra = sorted(set(other.tensors) - set(ref.tensors))
    if extra:
        raise UserError(
            f"{other.path}: tensor {extra[0]} is not in {ref.path} ({len(extra)} extra tensors)"
        )
