"""``build_evaluator``: one evaluator computing every objective, whichever evaluator owns it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluators.base import Evaluator, Layout, Scores
from evaluators.spec import EvalSpec, ObjectiveSpec
from search.errors import UserError

EvaluatorFactory = Callable[[Sequence[ObjectiveSpec], EvalSpec, Any, Any], Evaluator]
# What can be checked before a model is loaded (the launcher runs it before any worker starts).
EvaluatorCheck = Callable[[Sequence[ObjectiveSpec], EvalSpec], None]


def _lm_eval(
    objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
) -> Evaluator:
    from evaluators.lm_eval_evaluator import LmEvalEvaluator  # lazy: imports lm_eval

    return LmEvalEvaluator(objectives, spec, model, tokenizer)


def _perplexity(
    objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
) -> Evaluator:
    from evaluators.perplexity import PerplexityEvaluator

    return PerplexityEvaluator(objectives, spec, model, tokenizer)


def _check_lm_eval(objectives: Sequence[ObjectiveSpec], spec: EvalSpec) -> None:
    from evaluators.lm_tasks import check_tasks  # lazy: imports lm_eval

    names = list(dict.fromkeys(r.task for o in objectives for r in o.tasks))
    where = {r.task: f"objective {o.name!r}" for o in objectives for r in o.tasks}
    check_tasks(names, spec.tasks_path, where, confirm_run_unsafe_code=spec.confirm_run_unsafe_code)


# ObjectiveSpec.evaluator -> factory building one evaluator for all objectives of that kind.
EVALUATORS: dict[str, EvaluatorFactory] = {
    "lm_eval": _lm_eval,
    "perplexity": _perplexity,
}
# ObjectiveSpec.evaluator -> its checks without a model (kinds without checks are absent).
CHECKS: dict[str, EvaluatorCheck] = {
    "lm_eval": _check_lm_eval,
}


class CompositeEvaluator(Evaluator):
    """Runs several evaluators in order and merges their scores."""

    def __init__(self, parts: Sequence[Evaluator]) -> None:
        self.parts = tuple(parts)

    def evaluate(
        self, model: Any, tokenizer: Any, docs: Mapping[str, Sequence[int]] | None = None
    ) -> Scores:
        if docs is not None:
            known = {name for part in self.parts for name in part.examples_per_task()}
            unknown = sorted(set(docs) - known)
            if unknown:
                raise ValueError(f"docs: {', '.join(unknown)} not scored here")
        merged = Scores()
        for part in self.parts:
            mine = None
            if docs is not None:
                names = part.examples_per_task()
                mine = {k: v for k, v in docs.items() if k in names}
            scores = part.evaluate(model, tokenizer, mine)
            for name in ("tasks", "objectives", "examples", "stderr", "task_stderr"):
                getattr(merged, name).update(getattr(scores, name))
        return merged

    def examples_per_task(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for part in self.parts:
            counts.update(part.examples_per_task())
        return counts

    def example_layout(self) -> Layout:
        layouts = [part.example_layout() for part in self.parts]
        return Layout(
            terms={k: v for lay in layouts for k, v in lay.terms.items()},
            leaves={k: v for lay in layouts for k, v in lay.leaves.items()},
        )

    def combine(self, examples: Mapping[str, Sequence[float]]) -> Scores:
        merged = Scores()
        for part in self.parts:
            keys = part.example_layout().leaves
            scores = part.combine({k: v for k, v in examples.items() if k in keys})
            for name in ("tasks", "objectives", "examples", "stderr", "task_stderr"):
                getattr(merged, name).update(getattr(scores, name))
        return merged


def build_evaluator(
    objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
) -> Evaluator:
    """One evaluator for all objectives, built once for the resident model.

    Objectives are grouped by their ``evaluator`` field; each group gets one evaluator from
    :data:`EVALUATORS` (so all lm-eval tasks share one harness pass per call).

    Raises:
        UserError: no objectives, duplicate objective names, or any evaluator's own check.
    """
    if not objectives:
        raise UserError("objectives: expected at least one objective")
    names = [o.name for o in objectives]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"objectives: duplicate objective names {', '.join(dupes)}")
    kinds: dict[str, list[ObjectiveSpec]] = {}
    for obj in objectives:
        kinds.setdefault(obj.evaluator, []).append(obj)
    parts = [EVALUATORS[kind](group, spec, model, tokenizer) for kind, group in kinds.items()]
    return parts[0] if len(parts) == 1 else CompositeEvaluator(parts)


def check_objectives(
    objectives: Sequence[ObjectiveSpec],
    spec: EvalSpec,
    model_dir: Path | None = None,
    dtype: str = "auto",
) -> None:
    """What can be checked without a model: task names, group members, data, consent, and the
    scoring back end (:func:`check_backend`, with ``model_dir`` the folder the resident model
    will be loaded from, in ``dtype``).

    Raises:
        UserError: one line naming the objective, the task and what is wrong.
    """
    if any(o.evaluator == "lm_eval" for o in objectives):
        check_backend(spec, model_dir, dtype)
    kinds: dict[str, list[ObjectiveSpec]] = {}
    for obj in objectives:
        kinds.setdefault(obj.evaluator, []).append(obj)
    for kind, group in kinds.items():
        if kind in CHECKS:
            CHECKS[kind](group, spec)


def check_backend(spec: EvalSpec, model_dir: Path | None, dtype: str = "auto") -> None:
    """``backend: vllm``: vLLM imports, knows the model's architecture and accepts the settings
    (:func:`evaluators.vllm_checks.check_engine`; only the import without ``model_dir``).

    Raises:
        UserError: one line naming the field and what to do.
    """
    if spec.backend != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "eval.backend: vllm needs vLLM, which is not installed here: pip install -e '.[vllm]' "
            "(GPU) or `make vllm-venv` (CPU, .venv-vllm); or set eval.backend: hf"
        )
    try:
        import evaluators.vllm_lm  # noqa: F401 - lazy: imports vllm and lm-eval's VLLM
    except Exception as exc:  # a broken install fails in many ways
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"eval.backend: vllm: vLLM is installed but does not import ({reason}); reinstall it "
            "(`make vllm-venv` on CPU) or set eval.backend: hf"
        ) from None
    if model_dir is not None:
        from evaluators.vllm_checks import check_engine

        check_engine(spec, Path(model_dir), dtype)
