"""The up-front checks of ``eval.backend: vllm``, importable without vLLM (which they import
only to ask it).

:func:`check_engine` runs before any worker starts: the engine arguments, the architecture, the
attention head size vLLM's CPU attention runs (:func:`head_size` reads it through transformers'
config attributes, so GPT-2's ``n_embd`` / ``n_head`` count as others' ``head_dim``), then
vLLM's own engine configuration, each refused in one line naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from evaluators.spec import EvalSpec
from search.errors import UserError


def check_engine(spec: EvalSpec, model_dir: Path, dtype: str | torch.dtype = "auto") -> None:
    """Before any worker starts: the settings are vLLM engine arguments, vLLM knows the model's
    architecture, and vLLM accepts the engine configuration for the folder (its config only;
    no weights are read, no engine starts).

    Raises:
        UserError: one line naming the field (``eval.vllm...``, ``eval.backend``) and what to do.
    """
    import vllm
    from vllm import EngineArgs, ModelRegistry

    from evaluators.vllm_lm import engine_env, engine_kwargs

    names = {f.name for f in dataclasses.fields(EngineArgs)}
    unknown = sorted(set(spec.vllm.engine_args) - names)
    if unknown:
        raise UserError(
            f"eval.vllm.engine_args: {', '.join(unknown)} is not a vLLM {vllm.__version__} "
            "engine argument (see vllm.EngineArgs)"
        )
    taken = sorted(set(spec.vllm.engine_args) & RESERVED)
    if taken:
        raise UserError(
            f"eval.vllm.engine_args: {', '.join(taken)} is set by merge-search (the resident "
            "model's folder, dtype and tokenizer, eval.seed); remove it"
        )
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return  # not a model folder: the model's loader says so, naming the folder
    archs = list(config.get("architectures") or [])
    supported = set(ModelRegistry.get_supported_archs())
    if not archs or not supported.intersection(archs):
        shown = ", ".join(archs) or "none given in config.json"
        raise UserError(
            f"eval.backend: vllm: vLLM {vllm.__version__} does not support the architecture of "
            f"{model_dir} ({shown}); set eval.backend: hf"
        )
    _check_head_size(model_dir)
    engine_env()
    kwargs = engine_kwargs(spec, dtype)
    try:
        EngineArgs(model=str(model_dir), **kwargs).create_engine_config()
    except Exception as exc:  # vLLM raises ValueError, pydantic's ValidationError, ...
        text = " ".join(str(exc).split()) or type(exc).__name__
        field = next((k for k in kwargs if k in text), None)
        where = "eval.vllm" if field is None else f"eval.vllm.{_field_name(spec, field)}"
        raise UserError(
            f"{where}: vLLM rejects the engine settings for {model_dir}: {text[:300]}; "
            "change the setting or set eval.backend: hf"
        ) from None


def _check_head_size(model_dir: Path) -> None:
    """vLLM's CPU attention runs a few head sizes only; it fails at the first forward pass
    (not at start-up) on others, so check them here (:func:`check_head_size`)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    check_head_size(model_dir, CPUAttentionBackend.get_supported_head_sizes())


def check_head_size(model_dir: Path, supported: Sequence[int]) -> None:
    """``UserError`` (one line) when the model's attention head size (:func:`head_size`) is not
    one of ``supported``, the sizes vLLM's CPU attention runs."""
    size = head_size(model_dir)
    if size is not None and size not in supported:
        raise UserError(
            f"eval.backend: vllm: vLLM's CPU attention does not run the head size {size} of "
            f"{model_dir} (it runs {', '.join(map(str, supported))}); set eval.backend: hf"
        )


def head_size(model_dir: Path) -> int | None:
    """The attention head size of the model in ``model_dir``, read through transformers' config
    attributes, so every architecture's own names count (GPT-2's ``n_embd`` / ``n_head`` are
    its ``hidden_size`` / ``num_attention_heads``): ``head_dim`` where the config sets it, else
    ``hidden_size // num_attention_heads`` of its text model; ``None`` when it cannot tell."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception:  # noqa: BLE001 - not a config transformers reads: vLLM's own check says
        return None
    text = config.get_text_config()
    explicit = getattr(text, "head_dim", None)
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    hidden = getattr(text, "hidden_size", None)
    heads = getattr(text, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


# EngineArgs that merge-search sets itself
RESERVED = frozenset({"model", "tokenizer", "dtype", "seed"})


def _field_name(spec: EvalSpec, arg: str) -> str:
    """The eval.vllm field an engine argument came from."""
    if arg in spec.vllm.engine_args:
        return f"engine_args.{arg}"
    return arg if arg in type(spec.vllm).model_fields else f"{arg} (engine argument)"
