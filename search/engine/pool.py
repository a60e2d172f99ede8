"""The checkpoint pool: N Hugging Face folders (+ an optional base), checked, then held resident.

:meth:`CheckpointPool.open` reads only the ``config.json`` files and the safetensors headers, and
checks before any tensor is read that all folders share the architecture, the tensor names and
the shapes; a mismatch is one :class:`~search.errors.UserError` line naming the folder, the tensor
and both shapes (or the missing file / unreadable header).

Tensors are read lazily, with ``safetensors.safe_open``, on the first merge (or :meth:`load`).
Then the pool keeps, per tensor name, one ``[K, *shape]`` stack of the K checkpoints in the
pool's dtype on the pool's device, and the base's tensor separately (only when a method needs it).
With that layout a linear merge of one tensor is a single weighted sum that reads each input once
(see :mod:`search.engine.kernels`). Memory: ``K`` models (``K + 1`` with a base method) in the pool
dtype, plus the resident model that :meth:`load_model` builds.

Methods that read Fishers (``fisher``) need one more pool's worth: :meth:`load_fishers` holds
each checkpoint's diagonal Fisher in the same ``[K, *shape]`` per-tensor layout, on the pool's
device, in the pool's dtype (bfloat16 for a float16 pool: squared gradients overflow float16).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from search.engine.device import resolve_device
from search.engine.kernels import KERNELS, choose_fisher_kernel, choose_kernel
from search.errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
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
_FLOAT_STORAGE = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_MAX_HEADER = 100 * 2**20  # larger "header lengths" mean the file is not safetensors
_SAMPLE = 1 << 16  # bytes hashed from the start and the end of each file's data
# Transformer blocks: "model.layers.3.", "transformer.h.3.", "blocks.3." ...
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_EMBED_RE = re.compile(r"embed|(?:^|\.)(?:wte|wpe)\.")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it looks like, from the safetensors header."""

    file: Path
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Checkpoint:
    """One opened folder: its config, tensor table and header digest."""

    name: str
    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    files: tuple[Path, ...]
    n_bytes: int
    header_sha256: str

    def fingerprint(self) -> dict[str, Any]:
        """Name, bytes, header digest, and a digest of a data sample (retrained weights differ)."""
        sample = hashlib.sha256()
        for file in self.files:
            with open(file, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                f.seek(8 + length)
                sample.update(f.read(_SAMPLE))
                f.seek(max(8 + length, file.stat().st_size - _SAMPLE))
                sample.update(f.read(_SAMPLE))
        return {
            "name": self.name,
            "bytes": self.n_bytes,
            "header_sha256": self.header_sha256,
            "data_sample_sha256": sample.hexdigest(),
        }


class CheckpointPool:
    """K checkpoints of one architecture (+ an optional base), resident on one device and dtype.

    Build it with :meth:`open`. Attributes: ``names`` (folder basenames made unique), ``paths``,
    ``base_path``, ``device``, ``dtype``, ``tensor_names`` (in file order), ``shapes``,
    ``n_layers``, ``config`` (the reference's config.json: the base's, else the first checkpoint's).
    """

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        base: Checkpoint | None,
        device: torch.device,
        dtype: torch.dtype,
        kernel: str = "auto",
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
        self.fisher_mean = choose_fisher_kernel(device, dtype, kernel)  # methods with Fishers
        self._stacks: dict[str, torch.Tensor] | None = None
        self._base_tensors: dict[str, torch.Tensor] | None = None
        self._fishers: dict[str, torch.Tensor] | None = None
        # where the Fishers came from (calibration data, N, cache keys): for the model card
        self.fisher_source: dict[str, Any] | None = None
        self.fisher_records: tuple[dict[str, str], ...] = ()

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
    ) -> CheckpointPool:
        """Open and check the folders; reads headers only (``UserError`` on any mismatch).

        Args:
            checkpoints: the K model folders to merge.
            base_model: the shared base (needed by task-vector methods; also the source of the
                config and tokenizer when given).
            device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
            dtype: storage and model dtype (``float32``, ``bfloat16``, ``float16``); merges
                always accumulate in float32.
            kernel: weighted-sum kernel for linear merges, see :mod:`search.engine.kernels`.
        """
        if not checkpoints:
            raise UserError("checkpoint pool: expected at least one checkpoint folder")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype)

        if kernel not in KERNELS:
            raise UserError(f"kernel: expected one of {', '.join(KERNELS)}, got {kernel!r}")
        names = _unique_names([Path(p) for p in checkpoints])
        opened = [_open_checkpoint(Path(p), n) for p, n in zip(checkpoints, names, strict=True)]
        base = _open_checkpoint(Path(base_model), Path(base_model).name) if base_model else None
        reference = base or opened[0]
        for other in opened if base else opened[1:]:
            _check_compatible(reference, other)
        return cls(opened, base, torch_device, torch_dtype, kernel)

    # -- resident tensors --------------------------------------------------------------------

    def load(self, *, base: bool = False) -> CheckpointPool:
        """Read all checkpoint tensors into resident stacks now (with ``base``, the base's too)."""
        if self._stacks is None:
            k = len(self._checkpoints)
            stacks = {
                n: torch.empty((k, *s), dtype=self.dtype, device=self.device)
                for n, s in self.shapes.items()
            }
            for i, ckpt in enumerate(self._checkpoints):
                for name, tensor in _read_tensors(ckpt):
                    stacks[name][i].copy_(tensor)
            self._stacks = stacks
        if base and self._base_tensors is None:
            if self._base is None:
                raise UserError("checkpoint pool: this merge method needs a base model; none given")
            self._base_tensors = {
                name: tensor.to(self.device, self.dtype)
                for name, tensor in _read_tensors(self._base)
            }
        return self

    def stack(self, name: str) -> torch.Tensor:
        """The ``[K, *shape]`` stack of tensor ``name`` (loads the pool on first use)."""
        stacks = self._stacks if self._stacks is not None else self.load()._stacks
        return stacks[name]  # type: ignore[index]

    def base_tensor(self, name: str) -> torch.Tensor:
        """The base model's tensor ``name`` (loads the base on first use)."""
        tensors = (
            self._base_tensors
            if self._base_tensors is not None
            else self.load(base=True)._base_tensors
        )
        return tensors[name]  # type: ignore[index]

    def resident_bytes(self) -> int:
        """Bytes held by the resident stacks, base tensors and Fishers."""
        held = [
            *(self._stacks or {}).values(),
            *(self._base_tensors or {}).values(),
            *(self._fishers or {}).values(),
        ]
        return sum(t.numel() * t.element_size() for t in held)

    # -- Fishers (methods with ``needs_fisher``) ----------------------------------------------

    def load_fishers(
        self,
        fishers: Sequence[Mapping[str, torch.Tensor]],
        source: Mapping[str, Any] | None = None,
        records: Sequence[Mapping[str, str]] = (),
    ) -> CheckpointPool:
        """Hold each checkpoint's diagonal Fisher as a ``[K, *shape]`` stack per tensor.

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
        dtype = torch.bfloat16 if self.dtype == torch.float16 else self.dtype
        stacks = {}
        for name, shape in self.shapes.items():
            stack = torch.empty((len(fishers), *shape), dtype=dtype, device=self.device)
            for i, fisher in enumerate(fishers):
                tensor = fisher.get(name)
                if tensor is None or tuple(tensor.shape) != shape:
                    got = "missing" if tensor is None else f"shape {list(tensor.shape)}"
                    raise UserError(
                        f"checkpoint pool: Fisher of {self.names[i]} for tensor {name} is {got} "
                        f"(expected shape {list(shape)})"
                    )
                stack[i].copy_(tensor)
            stacks[name] = stack
        self._fishers = stacks
        self.fisher_source = dict(source) if source is not None else None
        self.fisher_records = tuple(dict(r) for r in records)
        return self

    @property
    def has_fishers(self) -> bool:
        return self._fishers is not None

    def fisher_stack(self, name: str) -> torch.Tensor:
        """The ``[K, *shape]`` stack of the checkpoints' Fishers of tensor ``name``."""
        if self._fishers is None:
            raise UserError("checkpoint pool: no Fishers loaded (see CheckpointPool.load_fishers)")
        return self._fishers[name]

    def model_bytes(self) -> int:
        """Bytes of one model in the pool dtype."""
        size = torch.tensor([], dtype=self.dtype).element_size()
        return sum(_numel(s) for s in self.shapes.values()) * size

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
        sha256 of the headers and of a 128 KiB data sample per file (reads no full file)."""
        return {
            "checkpoints": [c.fingerprint() for c in self._checkpoints],
            "base": self._base.fingerprint() if self._base else None,
        }

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
        return f"CheckpointPool({list(self.names)}{base}, device={self.device}, dtype={self.dtype})"


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


def _unique_names(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        name = p.resolve().name or str(p)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _read_tensors(ckpt: Checkpoint) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of ``ckpt`` on the CPU, read with ``safe_open``.

    The file is opened per tensor: ``safe_open`` maps the whole file and the pages read stay
    resident until it is closed, so this bounds the transient memory to one tensor.
    """

    for name, info in ckpt.tensors.items():
        with safe_open(str(info.file), framework="pt", device="cpu") as f:
            tensor = f.get_tensor(name)
        yield name, tensor


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


def _open_checkpoint(path: Path, name: str) -> Checkpoint:
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
    for file, expected in files.items():
        if not file.is_file():
            raise UserError(f"{file}: missing (listed in {path / INDEX_FILE})")
        header, raw = read_header(file)
        digest.update(raw)
        n_bytes += file.stat().st_size
        names = [n for n in header if n != "__metadata__"]
        for n in sorted(names, key=lambda n: header[n].get("data_offsets", [0])[0]):
            entry = header[n]
            if entry.get("dtype") not in _FLOAT_STORAGE:
                raise UserError(
                    f"{file}: tensor {n} has dtype {entry.get('dtype')}; only floating-point "
                    "tensors can be merged"
                )
            tensors[n] = TensorInfo(file, tuple(entry["shape"]), entry["dtype"])
        for n in expected or ():
            if n not in header:
                raise UserError(f"{file}: tensor {n} listed in {INDEX_FILE} but not in the file")
    return Checkpoint(name, path, config, tensors, tuple(files), n_bytes, digest.hexdigest())


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


def _check_compatible(ref: Checkpoint, other: Checkpoint) -> None:
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
