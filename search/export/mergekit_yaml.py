"""mergekit's YAML, both ways: write a plan as ``mergekit_config.yml``, read a config into a plan.

The subset handled (mergekit 0.1.5 names)::

    merge_method: ties            # or linear, task_arithmetic, dare_linear, dare_ties,
                                  #    breadcrumbs, slerp
    base_model: path/to/base      # task-vector methods; for slerp, the t = 0 end (listed in models)
    models:
      - model: path/to/a
        parameters: {weight: 0.6, density: 0.5}   # weight per model; density/gamma equal for all
    parameters: {normalize: true, lambda: 1.0, t: 0.5, density: 0.5, gamma: 0.01}
    dtype: float32                # the precision the merge is computed in
    out_dtype: bfloat16           # the written weights' (default: dtype, else the inputs')

Methods mergekit lacks (those a strategy provides) are read and written in the same format under
their own name, with merge-search's extension keys under ``parameters`` (declared by the method's
:class:`~search.engine.extras.MethodExtension`, e.g. the calibration data of its extras); such a
YAML starts with a note that it is for ``merge-search merge``, not ``mergekit-yaml``.

A weight may also be mergekit's list of conditional values (``[{filter: layers.0., value: 0.6},
..., {value: 0.2}]``, first match wins): that is how per-layer-group weights are written, and it
is read back as long as the weight is constant within each transformer block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.engine.dtypes import DTYPES
from search.engine.hub import resolve_model
from search.engine.plan import MergePlan
from search.engine.registry import METHODS, NOT_IN_MERGEKIT, MergekitForm, MergeMethod
from search.errors import UserError, one_line


class _Conditional(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: float
    filter: str | None = None


class _ModelParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float | list[_Conditional] | None = None
    density: float | None = None
    gamma: float | None = None


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: _ModelParameters | None = None


class _Parameters(BaseModel):
    # extra keys: a method's extension keys (MethodExtension.keys), else refused by _params
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    normalize: bool | None = None
    lambda_: float | None = Field(default=None, alias="lambda")
    t: float | None = None
    density: float | None = None
    gamma: float | None = None


class MergekitConfig(BaseModel):
    """The mergekit YAML keys ``merge-search merge`` reads (anything else is an error)."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: list[_ModelEntry] = Field(min_length=1)
    parameters: _Parameters | None = None
    dtype: str | None = None
    out_dtype: str | None = None


@dataclass(frozen=True)
class MergeRequest:
    """A config read into what the merge needs: folders, method, weights and params."""

    method: MergeMethod
    checkpoints: tuple[Path, ...]
    base_model: Path | None
    weights: tuple[Any, ...]  # per checkpoint: float, or a list of _Conditional
    params: dict[str, Any]
    dtype: str | None
    out_dtype: str | None = None
    # the method's extension settings (its MethodExtension.parse), e.g. calibration data
    extension: dict[str, Any] = field(default_factory=dict)

    def plan(
        self, tensor_names: Sequence[str], group_of_layer: Mapping[str, int], n_layers: int
    ) -> MergePlan:
        """The plan; conditional weights become one layer group per transformer block."""
        if not any(isinstance(w, list) for w in self.weights):
            return MergePlan.create(self.method.name, [float(w) for w in self.weights], self.params)
        rows = [
            _per_block(w, tensor_names, group_of_layer, n_layers, i)
            for i, w in enumerate(self.weights)
        ]
        return MergePlan.create(self.method.name, rows, self.params)


def read_config(path: str | Path, methods: Mapping[str, MergeMethod] | None = None) -> MergeRequest:
    """Read and check a mergekit YAML.

    Relative model paths resolve against the current directory (as in mergekit), not against
    the YAML's folder; a model that is no folder but a Hugging Face Hub ID (``org/name``,
    ``org/name@revision``) resolves to its snapshot (fetched, or from the cache offline).
    ``methods``: the methods it may name (default: the engine's built-in ones; the command
    passes :func:`search.strategies.merge_methods`).
    """

    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise UserError(f"{file}: not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{file}: not readable YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{file}: expected a mapping with merge_method and models")
    try:
        config = MergekitConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{file}: {one_line(exc, MergekitConfig, _HINTS)}") from None
    return _request(file, config, methods or METHODS)


def _request(
    file: Path, config: MergekitConfig, methods: Mapping[str, MergeMethod]
) -> MergeRequest:
    """The checked request: the method, the models in order, the parameters (``UserError``)."""
    method = _method(file, config.merge_method, methods)
    entries, base = _models(file, config, method)
    given = (
        config.parameters.model_dump(by_alias=True, exclude_none=True) if config.parameters else {}
    )
    ext = method.extension_impl
    extension = ext.parse(file, method.name, given) if ext is not None else {}
    params = _params(file, method, given, entries)
    weights: list[Any] = []
    for i, entry in enumerate(entries):
        weight = entry.parameters.weight if entry.parameters else None
        if weight is None and method.uses_weights:
            raise UserError(f"{file}: models[{i}].parameters.weight: required for {method.name}")
        weights.append(1.0 if weight is None else weight)
    return MergeRequest(
        method=method,
        checkpoints=tuple(Path(e.model).absolute() for e in entries),
        base_model=base,
        weights=tuple(weights),
        params=params,
        dtype=_dtype(file, "dtype", config.dtype),
        out_dtype=_dtype(file, "out_dtype", config.out_dtype),
        extension=extension,
    )


def _dtype(file: Path, key: str, value: str | None) -> str | None:
    """A dtype name torch knows, checked before any file is opened (``UserError``)."""
    if value is not None and value not in DTYPES:
        raise UserError(
            f"{file}: {key}: expected one of float32, bfloat16, float16, float64, got {value!r}"
        )
    return value


def _method(file: Path, name: str, methods: Mapping[str, MergeMethod]) -> MergeMethod:
    """The method of mergekit's ``merge_method`` (or merge-search's own name for the methods
    mergekit lacks)."""
    by_mergekit = {m.mergekit_name: m for m in methods.values() if m.mergekit_name}
    by_mergekit.update({m.name: m for m in methods.values() if m.mergekit is None})
    if name not in by_mergekit:
        raise UserError(
            f"{file}: merge_method {name!r} is not supported; supported: {', '.join(by_mergekit)}"
        )
    return by_mergekit[name]


def _models(
    file: Path, config: MergekitConfig, method: MergeMethod
) -> tuple[list[_ModelEntry], Path | None]:
    """The models to merge, in order, and the base (``None`` where the method takes none)."""
    named = [(f"models[{i}].model", e.model) for i, e in enumerate(config.models)]
    if config.base_model:
        named.insert(0, ("base_model", config.base_model))
    # a hub ID becomes its snapshot folder (search.engine.hub), once per name
    folders = {name: resolve_model(name, f"{file}: {field}").absolute() for field, name in named}
    entries = [e.model_copy(update={"model": str(folders[e.model])}) for e in config.models]
    base = folders[config.base_model] if config.base_model else None
    if method.mergekit is not None and method.mergekit.endpoints:
        if (
            base is None
            or len(entries) != 2
            or base not in [Path(e.model).absolute() for e in entries]
        ):
            raise UserError(
                f"{file}: {method.name} needs base_model (the t = 0 end) and exactly 2 models "
                "including it"
            )
        entries.sort(key=lambda e: Path(e.model).absolute() != base)
        return entries, None
    if method.needs_base:
        if base is None:
            raise UserError(f"{file}: merge_method {config.merge_method} needs base_model")
        # mergekit lets the base appear among the models; it is not a task vector.
        entries = [e for e in entries if Path(e.model).absolute() != base]
        if not entries:
            raise UserError(f"{file}: models: expected at least one model besides base_model")
    return entries, base


def _params(
    file: Path, method: MergeMethod, given: dict[str, Any], entries: list[_ModelEntry]
) -> dict[str, Any]:
    """The method's parameters: global ones, per-model ones that must agree, mergekit's
    defaults; their ranges checked now, before any file is opened."""
    for key in ("density", "gamma"):
        per_model = {getattr(e.parameters, key) for e in entries if e.parameters} - {None}
        if len(per_model) > 1:
            raise UserError(
                f"{file}: models[].parameters.{key} must be equal for all models, "
                f"got {sorted(per_model)}"
            )
        if per_model:
            given.setdefault(key, per_model.pop())
    if given.get("normalize") is False and "normalize" not in method.param_names:
        del given["normalize"]  # the method does not normalize anyway
    unknown = sorted(set(given) - method.param_names)
    if unknown:
        supported = ", ".join(p.name for p in method.params) or "none"
        raise UserError(
            f"{file}: parameter {unknown[0]} is not used by {method.name}; supported: {supported}"
        )
    for key, value in (method.mergekit.defaults if method.mergekit else {}).items():
        given.setdefault(key, value)
    try:
        method.resolve_params(given)
    except UserError as exc:
        raise UserError(f"{file}: {exc}") from None
    return given


def _per_block(weight, tensor_names, group_of_layer, n_layers, index) -> list[float]:
    """One weight per transformer block from a conditional list; error if it varies inside one."""
    if not isinstance(weight, list):
        return [float(weight)] * max(n_layers, 1)
    values: dict[int, float] = {}
    for name in tensor_names:
        value = _first_match(weight, name)
        if value is None:
            raise UserError(f"models[{index}].parameters.weight: no entry matches tensor {name}")
        group = group_of_layer[name]
        if values.setdefault(group, value) != value:
            raise UserError(
                f"models[{index}].parameters.weight: differs within layer group {group} "
                f"(tensor {name}); only per-block weights are supported"
            )
    return [values[g] for g in range(max(n_layers, 1))]


def _first_match(conditions: Sequence[_Conditional], name: str) -> float | None:
    for cond in conditions:
        if cond.filter in (None, "*") or cond.filter in name:
            return cond.value
    return None


_HINTS = {  # what a field expects, in place of pydantic's message
    "weight": "a number or mergekit's list of {filter, value} entries "
    "(gradient lists are not supported)",
}


# ---------------------------------------------------------------------------------------------
# Writing


def plan_to_yaml(
    plan: MergePlan,
    checkpoints: Sequence[str | Path],
    base_model: str | Path | None,
    dtype: str,
    layer_filters: Sequence[Sequence[str]] = (),
    extension: Mapping[str, Any] | None = None,
    method: MergeMethod | None = None,
    *,
    out_dtype: str | None = None,
) -> str:
    """The plan in mergekit's YAML.

    For a method mergekit lacks, the same format under merge-search's method name, headed by
    a note saying so (:data:`~search.engine.registry.NOT_IN_MERGEKIT`): ``merge-search merge``
    reads it back, ``mergekit-yaml`` cannot.

    Args:
        layer_filters: for plans with layer groups, the mergekit filters of each group in
            order (e.g. ``[["embed_tokens", "layers.0.", "layers.1."], ["layers.2.", ...]]``);
            the last group is written as the unfiltered fallback (final norm, lm_head).
        extension: merge-search's extension parameters (a method's extension keys,
            :class:`~search.engine.extras.MethodExtension`), written under ``parameters``.
        method: the plan's method when it is not built in.
        out_dtype: the written weights' dtype, when it is not ``dtype`` (the precision the
            merge is computed in).
    """

    method = method or METHODS[plan.method]
    form = method.mergekit or MergekitForm(
        method.name, note=NOT_IN_MERGEKIT.format(name=method.name)
    )
    params = method.resolve_params(plan.params)
    doc: dict[str, Any] = {"merge_method": form.name}
    paths = [str(p) for p in checkpoints]
    if form.endpoints:
        doc["base_model"] = paths[0]
        doc["models"] = [{"model": p} for p in paths]
    else:
        if method.needs_base and base_model is not None:
            doc["base_model"] = str(base_model)
        doc["models"] = []
        for path, row in zip(paths, plan.weights, strict=True):
            entry_params: dict[str, Any] = {"weight": _weight_setting(row, layer_filters)}
            for key in ("density", "gamma"):
                if key in params:
                    entry_params[key] = params[key]
            doc["models"].append({"model": path, "parameters": entry_params})
    shared = {k: v for k, v in params.items() if k not in ("density", "gamma")}
    shared.update(form.written)
    shared.update(extension or {})
    if shared:
        doc["parameters"] = shared
    doc["dtype"] = dtype
    if out_dtype is not None and out_dtype != dtype:
        doc["out_dtype"] = out_dtype
    text = yaml.safe_dump(doc, sort_keys=False)
    if form.note:
        text = f"# note: {form.note}\n" + text
    return text


def _weight_setting(row: Sequence[float], layer_filters: Sequence[Sequence[str]]) -> Any:
    if len(row) == 1 or len(set(row)) == 1:
        return row[0]
    if len(layer_filters) != len(row):
        raise ValueError("layer_filters: expected one list of filters per layer group")
    setting = [
        {"filter": flt, "value": row[g]}
        for g, filters in enumerate(layer_filters[:-1])
        for flt in filters
    ]
    setting.append({"value": row[-1]})
    return setting
