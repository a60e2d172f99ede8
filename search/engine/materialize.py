"""Turn a :class:`~search.engine.plan.MergePlan` into weights: in place in a resident model.

``materialize(plan, pool, model)`` overwrites the model's parameters tensor by tensor under
``torch.no_grad()``: each merged tensor is computed with float32 accumulation and copied into the
parameter's own storage, so no second copy of the model exists. Linear-form methods (``linear``,
``task_arithmetic``) run as one fused weighted sum per tensor that reads each input once and
writes straight into the parameter (:mod:`search.engine.kernels`); the other methods compute a
float32 result per tensor and copy it in.

:func:`merge_into` is the one merge loop (materialize, :func:`merged_tensors` and the export use
it). It reads its inputs through :meth:`CheckpointPool.pieces`, whatever the pool's placement
(:mod:`search.engine.placement`): resident stacks as they are, or blocks streamed from host
memory or read from the files; a linear-form merge is elementwise, so it runs block by block on
what a streaming placement hands over (the kernels give the same bits per element either way).

Methods that read per-tensor extras (:mod:`search.engine.extras`) get the pool's stacks of each
kind beside the weights; one with a fused kernel (``MergeMethod.fused``) writes straight into the
parameter too. Such methods come with the strategies that compute their extras, so the callers
pass the method (``method=``, from :func:`search.strategies.get_method`) where it is not built in.
:func:`model_parameters` maps the pool's tensor names to the model's parameters, for code that
reads their gradients; :func:`nonfinite_tensor` finds a merged tensor holding NaN or Inf (an
extreme extrapolation can overflow even when every input is finite).

Stochastic methods (DARE) draw from a ``torch.Generator`` seeded from ``plan.seed`` and the tensor
name, so a plan always gives the same weights whatever the tensor order or device count.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from search.engine.dtypes import work_dtype
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.engine.registry import MergeMethod, ParamValue, get_method
from search.errors import UserError


@dataclass(frozen=True)
class ResolvedPlan:
    """A plan checked against a pool: its method, complete params and per-group weights."""

    plan: MergePlan
    method: MergeMethod
    params: dict[str, ParamValue]
    group_weights: tuple[torch.Tensor, ...]  # [K] per layer group (float32; float64 pools: float64)
    # linear-form methods: per group, the coefficients (+ the base's last, when it is used)
    group_coeffs: tuple[tuple[torch.Tensor, bool], ...] = ()


def resolve(
    plan: MergePlan, pool: CheckpointPool, method: MergeMethod | None = None
) -> ResolvedPlan:
    """Check ``plan`` against ``pool`` before any work; ``UserError`` naming what does not fit.

    ``method``: the plan's method when it is not one of the engine's built-in methods.
    """
    method = method or get_method(plan.method)
    if method.name != plan.method:
        raise ValueError(f"plan for method {plan.method} resolved with method {method.name}")
    params = method.resolve_params(plan.params)
    k = len(pool.names)
    if plan.n_checkpoints != k:
        raise UserError(
            f"plan for method {plan.method}: {plan.n_checkpoints} weight rows for a pool of {k} "
            f"checkpoints ({', '.join(pool.names)})"
        )
    if method.n_checkpoints is not None and k != method.n_checkpoints:
        raise UserError(
            f"method {method.name}: merges exactly {method.n_checkpoints} checkpoints, got {k}"
        )
    if method.needs_base and pool.base_path is None:
        raise UserError(
            f"method {method.name}: needs a base model (task vectors are θ_i − θ_base); none given"
        )
    if any(pool.extras(kind) is None for kind in method.extras):
        raise UserError(f"method {method.name}: needs {method.missing_extras}")
    if plan.n_groups > 1 and plan.n_groups > max(pool.n_layers, 1):
        raise UserError(
            f"plan: {plan.n_groups} layer groups but the model has {pool.n_layers} "
            "transformer blocks"
        )
    rows = [[plan.weights[i][g] for i in range(k)] for g in range(plan.n_groups)]
    for g, row in enumerate(rows):
        if not all(math.isfinite(w) for w in row):
            raise UserError(f"plan: layer group {g} has a non-finite weight {row}")
        if method.min_weight is not None and min(row) < method.min_weight:
            raise UserError(
                f"plan: layer group {g} has a weight below {method.min_weight} ({row}); "
                f"method {method.name} needs weights >= {method.min_weight}"
            )
        if method.divides_by_weight_sum(params) and sum(row) == 0:
            raise UserError(
                f"plan: weights of layer group {g} sum to 0 ({row}); method {method.name} with "
                "normalize divides by their sum"
            )
    wdtype = work_dtype(pool.dtype)
    weights = tuple(torch.tensor(row, dtype=wdtype, device=pool.device) for row in rows)
    coeffs = []
    if method.linear_form is not None:
        for w in weights:
            c, base_coeff = method.linear_form(w, params)
            with_base = method.needs_base and base_coeff != 0.0
            coeffs.append(
                (torch.cat([c, c.new_tensor([base_coeff])]) if with_base else c, with_base)
            )
    return ResolvedPlan(plan, method, params, weights, tuple(coeffs))


def effective_weights(plan: MergePlan, method: MergeMethod | None = None) -> list[list[float]]:
    """The coefficient of each checkpoint in each layer group as the method applies it.

    ``result[i][g]``: normalized (÷ Σ w) when the method normalizes, times λ where the method
    has one; for ``slerp`` the interpolation weights ``[1 − t, t]``. For TIES the normalization is
    per entry over the agreeing signs; the value reported is its nominal ``λ·w_i / Σ w``.
    """
    method = method or get_method(plan.method)
    params = method.resolve_params(plan.params)
    per_group = [
        method.coefficients([w[g] for w in plan.weights], params) for g in range(plan.n_groups)
    ]
    return [[per_group[g][i] for g in range(plan.n_groups)] for i in range(plan.n_checkpoints)]


def tensor_seed(seed: int, name: str) -> int:
    """Seed for tensor ``name``: independent of the order tensors are visited in."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def merge_into(
    resolved: ResolvedPlan, pool: CheckpointPool, targets: Mapping[str, torch.Tensor]
) -> None:
    """Write the merged tensor of every name in ``targets`` into it, in order.

    Each target has the tensor's shape, any float dtype, and lives on the pool's device (a model
    parameter, or a fresh tensor).
    """
    method = resolved.method
    linear = bool(resolved.group_coeffs)
    uses_base = (
        any(with_base for _, with_base in resolved.group_coeffs) if linear else method.needs_base
    )
    split = linear and all(t.is_contiguous() for t in targets.values())
    for piece in pool.pieces(list(targets), split=split, base=uses_base):
        out = targets[piece.name]
        group = pool.group_of(piece.name, resolved.plan.n_groups)
        if linear:
            coeffs, with_base = resolved.group_coeffs[group]
            dst = out if piece.whole else out.view(-1)[piece.start : piece.stop]
            pool.weighted_sum(dst, piece.stack, coeffs, piece.base if with_base else None)
            continue
        weights = resolved.group_weights[group]
        extras = {kind: pool.extras(kind).get(piece.name) for kind in method.extras}  # type: ignore[union-attr]
        if method.fused is not None:  # one fused pass over the inputs, straight into ``out``
            fused = pool.fused_kernel(method.name, lambda: _build_fused(method, pool))
            fused(out, piece.stack, weights, **extras)
            continue
        generator = None
        if method.stochastic:
            generator = torch.Generator(device=pool.device)
            generator.manual_seed(tensor_seed(resolved.plan.seed, piece.name))
        merged = method.merge(
            piece.stack, piece.base, weights, resolved.params, generator, **extras
        )
        out.copy_(merged)


def _build_fused(method: MergeMethod, pool: CheckpointPool) -> Any:
    module, _, name = (method.fused or "").partition(":")
    return getattr(importlib.import_module(module), name)(pool.device, pool.dtype, pool.kernel)


def merged_tensors(
    plan: MergePlan,
    pool: CheckpointPool,
    dtype: torch.dtype | None = None,
    method: MergeMethod | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, merged tensor)`` one at a time, in ``dtype`` (default: the pool's)."""
    resolved = resolve(plan, pool, method)
    for name in pool.tensor_names:
        out = torch.empty(pool.shapes[name], dtype=dtype or pool.dtype, device=pool.device)
        merge_into(resolved, pool, {name: out})
        yield name, out


def materialize(
    plan: MergePlan, pool: CheckpointPool, model: Any, method: MergeMethod | None = None
) -> None:
    """Write the merge described by ``plan`` into ``model``'s parameters in place.

    ``model`` is the resident model from :meth:`CheckpointPool.load_model` (or any module whose
    state dict has the pool's tensor names, on the pool's device). Tied parameters (an
    ``lm_head`` sharing the embedding) are written once through the name the checkpoints store.
    """
    resolved = resolve(plan, pool, method)
    targets = _targets(pool, model)
    with torch.no_grad():
        merge_into(resolved, pool, targets)


def nonfinite_tensor(pool: CheckpointPool, model: Any) -> str | None:
    """The first pool tensor (in file order) whose parameter in ``model`` holds NaN or Inf."""
    with torch.no_grad():
        for name, target in _targets(pool, model).items():
            if not bool(torch.isfinite(target).all()):
                return name
    return None


def _targets(pool: CheckpointPool, model: Any) -> dict[str, torch.Tensor]:
    """Map each pool tensor name to the storage it fills in the model."""
    return {name: param.data for name, param in model_parameters(pool, model).items()}


def model_parameters(pool: CheckpointPool, model: Any) -> dict[str, torch.Tensor]:
    """Each pool tensor name's parameter in ``model`` (the ``Parameter``, with its ``.grad``).

    Checks that every tensor has a parameter of its shape on the pool's device, and that every
    floating-point parameter of the model comes from the checkpoints (``UserError`` otherwise).
    """
    state = model.state_dict(keep_vars=True)
    targets: dict[str, torch.Tensor] = {}
    for name in pool.tensor_names:
        target = _lookup(state, name)
        if target is None:
            raise UserError(f"model has no parameter for tensor {name} of {pool.reference_path}")
        if tuple(target.shape) != pool.shapes[name]:
            raise UserError(
                f"model parameter {name} has shape {list(target.shape)}, "
                f"{pool.reference_path} has {list(pool.shapes[name])}"
            )
        if target.device != pool.device and not (
            target.device.type == pool.device.type == "cuda" and pool.device.index is None
        ):
            raise UserError(f"model is on {target.device} but the pool is on {pool.device}")
        targets[name] = target
    written = {t.untyped_storage().data_ptr() for t in targets.values()}
    for key, tensor in state.items():
        if (
            isinstance(tensor, torch.nn.Parameter)
            and tensor.is_floating_point()
            and tensor.untyped_storage().data_ptr() not in written
        ):
            raise UserError(f"model parameter {key} is not in the checkpoints; cannot merge it")
    return targets


def _lookup(state: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
    if name in state:
        return state[name]
    # A checkpoint of the bare backbone ("layers.0...") in a causal LM ("model.layers.0...").
    for prefixed in (f"model.{name}", name.removeprefix("model.")):
        if prefixed in state:
            return state[prefixed]
    return None
