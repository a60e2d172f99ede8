"""Validated descriptions of what to score: objectives made of tasks, and evaluation settings.

These pydantic models are the evaluators' input; the study config embeds them as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search.errors import deprecated

# A generation setting's value, as lm-eval's ``generation_kwargs`` take them.
GenValue = str | int | float | bool | list[str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskRef(_Strict):
    """One lm-eval task, group or tag inside an objective.

    A group scores as lm-eval aggregates it (its ``aggregate_metric_list``); a tag stands for
    its tasks, each a term of the objective with this weight. ``limit``, ``num_fewshot`` and
    ``gen_kwargs`` apply to every task of a group or tag.
    """

    task: str = Field(min_length=1)
    metric: str | None = None  # None: the task's (group's) first metric
    weight: float = Field(default=1.0, gt=0)
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=1)  # None: EvalSpec.limit
    # generate_until tasks: updates the task's generation_kwargs (max_gen_toks, until, ...)
    gen_kwargs: dict[str, GenValue] | None = None

    @field_validator("gen_kwargs")
    @classmethod
    def _check_gen_kwargs(cls, value: dict[str, GenValue] | None) -> dict[str, GenValue] | None:
        if value is not None and "max_length" in value:
            raise ValueError(
                "gen_kwargs.max_length: use max_gen_toks for the generated tokens "
                "(eval.max_length sets the model's context)"
            )
        return value


class ObjectiveSpec(_Strict):
    """A named number to optimize: the weighted mean of its tasks' scores.

    ``evaluator`` picks who computes it: ``lm_eval`` (``tasks``) or ``perplexity`` (``data``, a
    local .txt or .jsonl file with a ``text`` field; lower is better).

    ``search_tasks`` (lm_eval objectives; formerly ``signal``, still read with a deprecation
    warning): tasks the *search* scores this objective by instead of ``tasks``, a lower-variance
    measure of the same skill (the gold answer's log-likelihood on the same examples rather than
    0/1 exact match: AI2's "Signal and Noise", 2025). The sampler, the front and the search's
    strategies see these; the held-out and test re-scores, the choice (``export --knee``) and the
    verdict score ``tasks``, so a study with search tasks needs ``eval.heldout``.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    direction: Literal["maximize", "minimize"] = "maximize"
    evaluator: Literal["lm_eval", "perplexity"] = "lm_eval"
    tasks: tuple[TaskRef, ...] = ()
    data: Path | None = None
    search_tasks: tuple[TaskRef, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "signal" in data:
            if "search_tasks" in data:
                raise ValueError("signal: the old name of search_tasks; give only one")
            deprecated("objectives[].signal", "objectives[].search_tasks")
            data = {("search_tasks" if k == "signal" else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _check_kind(self) -> ObjectiveSpec:
        if self.evaluator == "lm_eval" and not self.tasks:
            raise ValueError(
                f"objective {self.name!r}: lm_eval objectives need a non-empty 'tasks' list"
            )
        if self.evaluator == "perplexity" and self.data is None:
            raise ValueError(
                f"objective {self.name!r}: perplexity objectives need 'data' "
                "(a .txt or .jsonl file)"
            )
        if self.search_tasks and self.evaluator != "lm_eval":
            raise ValueError(
                f"objective {self.name!r}: search_tasks applies to lm_eval objectives (their "
                "tasks), not to perplexity ones"
            )
        return self


class VllmSpec(_Strict):
    """vLLM engine settings (``eval.backend: vllm``): one in-process engine per worker.

    Defaults keep room for the merge engine beside vLLM on the same device: the checkpoint pool
    and the resident model the merges are written into live there too.
    """

    # the engine's context (prompt + generated tokens); None: eval.max_length, else the model's
    max_model_len: int | None = Field(default=None, ge=2)
    # GPU: fraction of the device's memory vLLM may take (weights + KV cache). vLLM's own
    # default, 0.9, leaves no room for the pool; 0.4 does for a pool of a few models.
    gpu_memory_utilization: float = Field(default=0.4, gt=0, le=1)
    # CPU: the KV cache in GiB (vLLM's kv_cache_memory_bytes; without it vLLM reserves a share
    # of the host's memory per engine, one engine per worker). 1 GiB holds ~2 k tokens of a 7 B
    # Llama in bfloat16 (0.5 MB a token), far more for small models.
    cpu_kv_cache_gib: float = Field(default=1.0, gt=0)
    # skip CUDA graphs / compilation: faster start-up, slower decoding. Start-up happens once per
    # worker, so compiled decoding pays off on studies of more than a handful of trials.
    enforce_eager: bool = False
    max_num_seqs: int | None = Field(default=None, ge=1)  # sequences per step; None: vLLM's
    # any other vllm.EngineArgs field (checked against vLLM before any worker starts)
    engine_args: dict[str, Any] = Field(default_factory=dict)


class EvalSpec(_Strict):
    """How tasks are run. Defaults follow lm-eval's; fixed seeds keep trials comparable."""

    tasks_path: Path | None = None  # folder of task YAMLs (TaskManager include_path)
    limit: int | None = Field(default=None, ge=1)  # examples per task; None: all
    batch_size: int = Field(default=32, ge=1)
    num_fewshot: int | None = Field(default=None, ge=0)
    seed: int = 0
    # search task -> held-out task, used to re-score the Pareto front on data the search never saw
    heldout: dict[str, str] = Field(default_factory=dict)
    # lm-eval's chat settings: false, true (the tokenizer's template) or a template name
    apply_chat_template: bool | str = False
    system_instruction: str | None = None
    # None: lm-eval's default, true exactly when a chat template is applied
    fewshot_as_multiturn: bool | None = None
    max_length: int | None = Field(default=None, ge=2)  # the model's context; None: its config's
    confirm_run_unsafe_code: bool = False  # run tasks marked unsafe_code (they execute output)
    # who runs lm-eval's requests: hf (transformers, the default) or vllm (one resident vLLM
    # engine per worker, each merge's weights reloaded into it: pip install -e .[vllm])
    backend: Literal["hf", "vllm"] = "hf"
    vllm: VllmSpec = Field(default_factory=VllmSpec)

    @model_validator(mode="after")
    def _check_chat(self) -> EvalSpec:
        check_chat_settings(self.apply_chat_template, self.fewshot_as_multiturn, "")
        return self

    @property
    def device_share(self) -> float:
        """The share of each GPU's memory the back end takes per worker beyond the resident
        model: vLLM's ``gpu_memory_utilization``; 0 for ``hf``."""
        return self.vllm.gpu_memory_utilization if self.backend == "vllm" else 0.0

    @property
    def multiturn(self) -> bool:
        """``fewshot_as_multiturn`` as lm-eval uses it (its default resolved)."""
        if self.fewshot_as_multiturn is None:
            return bool(self.apply_chat_template)
        return self.fewshot_as_multiturn


def check_chat_settings(template: bool | str, multiturn: bool | None, prefix: str) -> None:
    """lm-eval's rules: a template name is not empty; multi-turn few-shot needs a template.

    Raises:
        ValueError: naming the field (``prefix`` + name).
    """
    if isinstance(template, str) and not template.strip():
        raise ValueError(
            f"{prefix}apply_chat_template: expected true, false or a chat template name"
        )
    if multiturn and not template:
        raise ValueError(
            f"{prefix}fewshot_as_multiturn: true needs {prefix}apply_chat_template "
            "(few-shot examples become chat turns)"
        )
