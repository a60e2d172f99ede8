"""Export a merge as a Hugging Face folder, and the ``merge-search merge`` command.

The folder holds the merged weights as safetensors (sharded with ``model.safetensors.index.json``
above ``max_shard_size``), ``config.json``, ``generation_config.json``, the tokenizer files (from
the base, else the first checkpoint), a ``README.md`` model card and ``mergekit_config.yml``
(for a method mergekit lacks, the same format for ``merge-search merge``, saying so). A merge
that read per-tensor extras also holds what their method's extension keeps
(:meth:`~search.engine.extras.MethodExtension.export`: e.g. the calibration examples, which that
YAML names, and the card's record of the data). Everything is written into a temporary
folder beside the target and renamed into place at the end, so a failed export leaves nothing
half-written; an existing target is replaced only with ``force``, and the old folder is removed
only after the new one is in place.

Every folder written here holds a marker, ``merge_search.json`` (what wrote it, the plan key, the
inputs), next to ``mergekit_config.yml``. ``force`` replaces only a folder that holds both: a
folder merge-search did not write is the user's and is never deleted (:func:`check_output`).
No output folder may be, contain or lie inside an input (a checkpoint, the base, the tasks
folder, the study's database, the config: ``protected``). :func:`check_room` checks, before any
work, that the folder's filesystem has room for the merged weights and can be written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search.engine.dtypes import resolve_dtype
from search.engine.extras import ExtrasExport
from search.engine.hub import hub_id, model_name, model_source
from search.engine.layers import LAYER_RE
from search.engine.materialize import effective_weights, merge_into, resolve
from search.engine.model import TOKENIZER_FILES, tokenizer_path
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.engine.registry import MergeMethod
from search.errors import UserError
from search.export.card import model_card
from search.export.mergekit_yaml import plan_to_yaml, read_config

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9
MARKER_FILE = "merge_search.json"  # what wrote the folder: --force replaces only such folders
YAML_FILE = "mergekit_config.yml"
MADE_BY = "merge-search"
_ROOM_SLACK = 2**20  # bytes beyond the weights: configs, card, YAML, marker


def export_merge(
    plan: MergePlan,
    pool: CheckpointPool,
    out_dir: str | Path,
    *,
    force: bool = False,
    card_extra: Mapping[str, Any] | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    dtype: str | torch.dtype | None = None,
    protected: Sequence[tuple[str, str | Path]] = (),
    method: MergeMethod | None = None,
) -> Path:
    """Write the merge ``plan`` of ``pool`` as a loadable Hugging Face folder; returns its path.

    Args:
        plan: what to merge; checked against the pool first (``UserError``).
        pool: the opened checkpoints.
        out_dir: the folder to create; refused if it exists unless ``force``.
        force: replace an existing ``out_dir`` that merge-search wrote (it holds
            ``merge_search.json``); never a folder that is, holds or lies inside an input.
        card_extra: extra model-card sections, title → content (text, or data shown as JSON).
        max_shard_size: bytes per safetensors shard before splitting.
        dtype: dtype of the written weights (default: the inputs', ``pool.input_dtype``);
            the merge is computed in float32 (:func:`computed_in`) and rounded once to it.
        protected: more inputs the folder must keep clear of, as ``(what, path)`` (the tasks
            folder, the study's database, the config); the pool's folders always are.
        method: the plan's method when it is not built in
            (:func:`search.strategies.get_method`).
    """

    resolved = resolve(plan, pool, method)
    out_dtype = resolve_dtype(dtype) if dtype is not None else pool.input_dtype
    target = check_output(out_dir, force=force, protected=[*pool_inputs(pool), *protected])
    if max_shard_size <= 0:
        raise UserError(
            f"max_shard_size: expected a positive number of bytes, got {max_shard_size}"
        )

    dtype_name = dtype_text(out_dtype)
    computed = computed_in(pool)
    how = (
        "the inputs' dtype"
        if out_dtype == pool.input_dtype
        else f"requested; the inputs are {dtype_text(pool.input_dtype)}"
    )
    dtype_line = (
        f"{dtype_name} ({how}), the precision the merge is computed in"
        if out_dtype == computed
        else f"{dtype_name} ({how}): computed in {dtype_text(computed)}, rounded once"
    )
    ext = resolved.method.extension_impl
    kept = ext.export(pool, target) if ext is not None else ExtrasExport()
    card_extra = {**(card_extra or {}), **kept.card}
    yaml_text = mergekit_yaml_of(plan, pool, out_dtype, kept.parameters, resolved.method)
    card = model_card(
        title=target.name,
        plan=plan,
        method=resolved.method,
        params=resolved.params,
        names=pool.names,
        coefficients=effective_weights(plan, resolved.method),
        base_name=model_name(pool.base_path) if pool.base_path else None,
        hub_ids=[hub_name(p) for p in pool.paths],
        base_hub_id=hub_name(pool.base_path) if pool.base_path else None,
        dtype=dtype_line,
        mergekit_yaml=yaml_text,
        extra=card_extra,
    )

    tok = tokenizer_path(pool)
    check_room(target, export_bytes(pool, out_dtype))
    made = _make_parents(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_weights(resolved, pool, tmp, out_dtype, max_shard_size)
        _write_configs(pool, tmp, dtype_name)
        for name in TOKENIZER_FILES:
            if tok is not None and (tok / name).is_file():
                shutil.copy2(tok / name, tmp / name)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / YAML_FILE).write_text(yaml_text, encoding="utf-8")
        for name, text in kept.files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        marker = provenance(plan, pool, dtype_name)
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _swap_in(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):  # a disk that filled up meanwhile, a folder made read-only
            raise UserError(
                f"{target}: writing the merge failed ({exc.strerror or exc}); nothing was left "
                "behind"
            ) from None
        raise
    return target


def mergekit_yaml_of(
    plan: MergePlan,
    pool: CheckpointPool,
    dtype: torch.dtype | None = None,
    extension: Mapping[str, Any] | None = None,
    method: MergeMethod | None = None,
) -> str:
    """The plan as the ``mergekit_config.yml`` an export of it holds: the pool's folders (a
    hub snapshot as ``org/name@commit``), per-layer-group filters, computed in
    :func:`computed_in`, written in ``dtype`` (default: the inputs'); ``extension``:
    merge-search's own parameters (a method's extension keys); ``method``: the plan's method
    when it is not built in."""
    return plan_to_yaml(
        plan,
        [model_source(p) for p in pool.paths],
        model_source(pool.base_path) if pool.base_path else None,
        dtype_text(computed_in(pool)),
        _layer_filters(pool, plan.n_groups),
        extension,
        method,
        out_dtype=dtype_text(dtype or pool.input_dtype),
    )


def hub_name(folder: Path) -> str | None:
    """``org/name`` of a hub snapshot folder, else ``None``."""
    found = hub_id(folder)
    return found[0] if found else None


def dtype_text(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``bfloat16``: the name configs and mergekit use."""
    return str(dtype).removeprefix("torch.")


def computed_in(pool: CheckpointPool) -> torch.dtype:
    """The precision of a merge, as mergekit's ``dtype`` states it: every method combines the
    inputs in float32 (float64 for a float64 pool); a pool held narrower than its inputs
    rounded them to its own dtype first, so then that is the precision."""
    if pool.dtype == torch.float64:
        return torch.float64
    if pool.dtype.itemsize < pool.input_dtype.itemsize:
        return pool.dtype
    return torch.float32


@dataclass(frozen=True)
class Provenance:
    """The marker ``merge_search.json``: what wrote the folder and from which inputs."""

    made_by: str
    format: int
    method: str
    plan_key: str
    checkpoints: list[str]
    base_model: str | None
    dtype: str


def provenance(plan: MergePlan, pool: CheckpointPool, dtype_name: str) -> dict[str, Any]:
    """The marker's JSON (:class:`Provenance`)."""
    return dataclasses.asdict(
        Provenance(
            made_by=MADE_BY,
            format=1,
            method=plan.method,
            plan_key=plan.key,
            checkpoints=[str(p) for p in pool.paths],
            base_model=str(pool.base_path) if pool.base_path else None,
            dtype=dtype_name,
        )
    )


def pool_inputs(pool: CheckpointPool) -> list[tuple[str, Path]]:
    """The pool's folders as ``(what, path)`` for :func:`check_output`."""
    items = [("an input checkpoint", p) for p in pool.paths]
    return items + ([("the base model", pool.base_path)] if pool.base_path else [])


def written_by_merge_search(folder: Path) -> bool:
    """Whether ``folder`` holds the marker and YAML that :func:`export_merge` writes."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("made_by") == MADE_BY
        and (folder / YAML_FILE).is_file()
    )


def check_output(
    out_dir: str | Path, *, force: bool, protected: Sequence[tuple[str, str | Path]] = ()
) -> Path:
    """The absolute output folder, or ``UserError`` (one line, nothing touched) when it may not
    be written: it is, holds or lies inside a ``protected`` path (``(what, path)``); it exists
    and ``force`` is off; or ``force`` is on but the folder is not one merge-search wrote."""
    target = Path(out_dir).absolute()
    real = target.resolve()
    for what, path in protected:
        other = Path(path).absolute().resolve()
        if real == other:
            relation = "is"
        elif real in other.parents:
            relation = "contains"
        elif other in real.parents:
            relation = "lies inside"
        else:
            continue
        named = "" if relation == "is" else f" {path}"
        raise UserError(f"{target}: {relation} {what}{named}; choose another output folder")
    if not (target.exists() or target.is_symlink()):
        return target
    if not force:
        raise UserError(f"{target}: already exists; pass --force to replace a merge-search export")
    if not target.is_dir() or target.is_symlink():
        raise UserError(f"{target}: exists and is not a folder; --force replaces only exports")
    if not written_by_merge_search(target):
        raise UserError(
            f"{target}: not written by merge-search (no {MARKER_FILE} beside {YAML_FILE}); "
            "--force replaces only merge-search exports: remove it yourself or choose another "
            "folder"
        )
    return target


def export_bytes(pool: CheckpointPool, dtype: torch.dtype) -> int:
    """Bytes an export of ``pool`` writes, about: the weights in ``dtype`` and the tokenizer."""
    size = torch.tensor([], dtype=dtype).element_size()
    weights = sum(math.prod(s) for s in pool.shapes.values()) * size
    tok = tokenizer_path(pool)
    extra = sum((tok / n).stat().st_size for n in TOKENIZER_FILES if tok and (tok / n).is_file())
    return weights + extra + _ROOM_SLACK


def check_room(target: str | Path, n_bytes: int) -> None:
    """``UserError`` (one line, nothing left behind) unless ``target``'s nearest existing folder
    can be written and its filesystem has ``n_bytes`` free (the old folder is removed only once
    the new one is in place, so a replaced export needs the room too)."""
    target = Path(target).absolute()
    where = target.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        probe = tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=where)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError(
            f"{target}: cannot write in {where} ({exc.strerror or exc}); choose another folder"
        ) from None
    free = shutil.disk_usage(where).free
    if free < n_bytes:
        raise UserError(
            f"{target}: needs {_mb(n_bytes)} for the merged model but {where} has {_mb(free)} "
            "free; free some space or choose another folder"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    try:
        for f in reversed(missing):
            f.mkdir()
            made.append(f)
    except OSError as exc:
        for f in reversed(made):
            f.rmdir()
        raise UserError(f"{missing[0]}: cannot create ({exc.strerror or exc})") from None
    return made


# safetensors' dtype codes of the dtypes a pool can be written in
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
}


def _write_weights(
    resolved, pool: CheckpointPool, folder: Path, dtype: torch.dtype, max_shard: int
) -> None:
    """Write the merged weights, sharded above ``max_shard`` bytes, one tensor at a time:
    each shard's header is known before any tensor is merged (names, shapes, dtype), so every
    merged tensor is written to its shard as soon as it is made and dropped (peak memory: one
    merged tensor and what its method needs, not a shard; ``bench/export_memory.py``)."""

    size = torch.tensor([], dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    used = 0
    for name in pool.tensor_names:
        n_bytes = size * math.prod(pool.shapes[name])
        if shards[-1] and used + n_bytes > max_shard:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n_bytes
    files = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    total = 0
    with torch.no_grad():
        for file, names in zip(files, shards, strict=True):
            total += _stream_shard(resolved, pool, folder / file, names, dtype)
            weight_map.update(dict.fromkeys(names, file))
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _stream_shard(
    resolved, pool: CheckpointPool, path: Path, names: Sequence[str], dtype: torch.dtype
) -> int:
    """One safetensors file (the format's header, then each tensor's bytes in order, merged
    one at a time); returns the data bytes written."""
    size = torch.tensor([], dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        n_bytes = size * math.prod(pool.shapes[name])
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(pool.shapes[name]),
            "data_offsets": [offset, offset + n_bytes],
        }
        offset += n_bytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in names:
            out = torch.empty(pool.shapes[name], dtype=dtype, device=pool.device)
            merge_into(resolved, pool, {name: out})
            host = out.cpu().reshape(-1)
            f.write(memoryview(host.view(torch.uint8).numpy()))
            del out, host
    return offset


def _write_configs(pool: CheckpointPool, folder: Path, dtype_name: str) -> None:
    config = dict(pool.config)
    config["dtype"] = dtype_name
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype_name
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for source in (pool.reference_path, pool.paths[0]):
        if (source / "generation_config.json").is_file():
            shutil.copy2(source / "generation_config.json", folder / "generation_config.json")
            return
    generation = {
        k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config
    }
    generation["_from_model_config"] = True
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an old ``target`` is moved aside first, deleted last."""
    if not target.exists():
        tmp.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _layer_filters(pool: CheckpointPool, n_groups: int) -> list[list[str]]:
    """mergekit filters per layer group: block prefixes (``model.layers.3.``), embedding names."""

    groups: list[list[str]] = [[] for _ in range(n_groups)]
    for name in pool.tensor_names:
        m = LAYER_RE.search(name)
        flt = name[: m.end()] if m else name
        group = groups[pool.group_of(name, n_groups)]
        if flt not in group:
            group.append(flt)
    return groups


# ---------------------------------------------------------------------------------------------
# A mergekit YAML, merged and exported


def merge_from_yaml(
    config: str | Path,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    force: bool = False,
    placement: str = "auto",
    methods: Mapping[str, MergeMethod] | None = None,
) -> tuple[Path, MergePlan, CheckpointPool]:
    """Merge what a mergekit YAML describes and export the folder (``merge-search merge``).

    Reads the YAML (see :mod:`search.export.mergekit_yaml` for the keys), merges on ``device``
    holding the checkpoints in the YAML's ``dtype`` (else float32; every method accumulates in
    float32 either way) as ``placement`` says (:mod:`search.engine.placement`; the
    merged bits are the same in every placement). Relative model paths in the YAML resolve
    against the current directory, as mergekit does, not against the YAML's folder; so do the
    files a method's extension keys name. A method that reads per-tensor extras makes them
    through its :class:`~search.engine.extras.MethodExtension` (the export package reads no
    data itself).

    Args:
        dtype: the written weights' dtype; default as mergekit: the YAML's ``out_dtype``, else
            its ``dtype``, else the inputs' dtype (``pool.input_dtype``).
        methods: the methods the YAML may name (the command passes
            :func:`search.strategies.merge_methods`; default: the engine's built-in ones).

    Returns:
        ``(folder written, the plan, the opened pool)``.
    """

    request = read_config(config, methods)
    ext = request.method.extension_impl
    protected: list[tuple[str, str | Path]] = [("the merge config", config)]
    if ext is not None:
        protected += ext.inputs(request.extension)
    inputs = [("an input checkpoint", p) for p in request.checkpoints]
    if request.base_model is not None:
        inputs.append(("the base model", request.base_model))
    out = check_output(out_dir, force=force, protected=[*inputs, *protected])
    wanted = dtype or request.out_dtype or request.dtype
    out_dtype = resolve_dtype(wanted) if wanted else None
    pool = CheckpointPool.open(
        request.checkpoints,
        request.base_model,
        device=device,
        dtype=request.dtype or "float32",
        placement=placement,
    )
    out_dtype = out_dtype or pool.input_dtype
    pool.identity.content_digests()  # one read: refuses a file holding NaN or Inf (cached)
    check_room(out, export_bytes(pool, out_dtype))  # before the extras are computed
    if ext is not None:
        ext.load(pool, request.extension)
    block = {name: pool.group_of(name, max(pool.n_layers, 1)) for name in pool.tensor_names}
    plan = request.plan(pool.tensor_names, block, pool.n_layers)
    path = export_merge(
        plan,
        pool,
        out,
        force=force,
        dtype=out_dtype,
        protected=protected,
        method=request.method,
        card_extra={
            "Source config": f"Merged from `{Path(config).name}` with `merge-search merge`."
        },
    )
    return path, plan, pool
