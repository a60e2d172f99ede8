"""lm-eval scoring of one resident model whose weights change in place between calls.

Built once: the tasks (TaskManager, datasets held in memory, metric keys) and one
:class:`~evaluators.resident_lm.ResidentHFLM` (lm-eval's ``HFLM``, tokenization memoized)
wrapping the model object. Each :meth:`LmEvalEvaluator.evaluate` call reseeds ``random``,
``numpy`` and ``torch`` (as ``simple_evaluate`` does) and the few-shot samplers, runs
``lm_eval.evaluator.evaluate`` on the prebuilt task dict (no bootstrap, no sample logging;
lm-eval's per-call progress bars are dropped) and reduces the task scores to objective values.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lm_eval.evaluator import evaluate

from evaluators.base import Evaluator, Scores
from evaluators.lm_tasks import load_tasks
from evaluators.resident_lm import ResidentHFLM
from evaluators.spec import EvalSpec, ObjectiveSpec
from search.errors import UserError


@dataclass(frozen=True)
class TaskRun:
    """How one task is run: examples scored (``None``: all) and few-shot count."""

    name: str
    limit: int | None
    num_fewshot: int | None


@dataclass(frozen=True)
class ObjectiveTerm:
    """One (task, metric, weight) of an objective, with the metric resolved to a results key."""

    score_key: str  # "task/metric", the key in Scores.tasks
    task: str
    results_key: str  # "metric,filter" as lm-eval reports it
    weight: float


def plan_task_runs(objectives: Sequence[ObjectiveSpec], spec: EvalSpec) -> dict[str, TaskRun]:
    """One run per distinct task; the same task asked with different settings is refused."""
    runs: dict[str, TaskRun] = {}
    for obj in objectives:
        for ref in obj.tasks:
            run = TaskRun(
                name=ref.task,
                limit=ref.limit if ref.limit is not None else spec.limit,
                num_fewshot=ref.num_fewshot if ref.num_fewshot is not None else spec.num_fewshot,
            )
            if runs.setdefault(ref.task, run) != run:
                raise UserError(
                    f"objective {obj.name!r}: task {ref.task!r} is used elsewhere with another "
                    f"limit/num_fewshot ({runs[ref.task]}); use one setting per task"
                )
    return runs


def weighted_mean(terms: Sequence[tuple[float, float]]) -> float:
    """Weighted mean of ``(value, weight)`` pairs: the reduction of an objective."""
    total = sum(w for _, w in terms)
    return sum(v * w for v, w in terms) / total


class LmEvalEvaluator(Evaluator):
    """Scores ``lm_eval`` objectives on the model it was built with.

    Args:
        objectives: objectives with ``evaluator == "lm_eval"``.
        spec: tasks path, limit, batch size, few-shot count and seed.
        model: the resident ``transformers`` model (wrapped once in ``HFLM``).
        tokenizer: its tokenizer.

    Raises:
        UserError: unknown task, group name, a metric the task does not produce, conflicting
            per-task settings; all before any model call.
    """

    def __init__(
        self, objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
    ) -> None:

        self._objectives = tuple(objectives)
        self._spec = spec
        self._runs = plan_task_runs(objectives, spec)
        where = {r.task: f"objective {o.name!r}" for o in objectives for r in o.tasks}
        self._tasks = load_tasks(list(self._runs), spec.tasks_path, where)
        self._terms: dict[str, list[ObjectiveTerm]] = {}
        for obj in objectives:
            terms = []
            for ref in obj.tasks:
                loaded = self._tasks[ref.task]
                label, key = loaded.resolve_metric(ref.metric, f"objective {obj.name!r}")
                terms.append(ObjectiveTerm(f"{ref.task}/{label}", ref.task, key, ref.weight))
            self._terms[obj.name] = terms
        for name, run in self._runs.items():
            task = self._tasks[name].task
            if run.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=run.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
        self._task_dict = {
            "tasks": {n: t.task for n, t in self._tasks.items()},
            "groups": {},
            "group_map": {},
        }
        for loaded in self._tasks.values():
            hold_docs_in_memory(loaded.task)
        # One shared limit (the usual case) goes to lm-eval as ``limit``; per-task limits as
        # ``samples`` (the first n documents of each task), which scans every document.
        limits = {run.limit for run in self._runs.values()}
        self._limit = limits.pop() if len(limits) == 1 else None
        self._samples = {
            name: list(range(min(run.limit, len(self._tasks[name].task.eval_docs))))
            for name, run in self._runs.items()
            if run.limit is not None and self._limit is None
        }
        self._model = model
        self.lm = ResidentHFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size)

    def examples_per_task(self) -> dict[str, int]:
        """How many examples of each task one call scores."""
        return {
            name: len(self._samples[name])
            if name in self._samples
            else min(len(t.task.eval_docs), self._limit or len(t.task.eval_docs))
            for name, t in self._tasks.items()
        }

    def evaluate(self, model: Any, tokenizer: Any) -> Scores:
        """Score the resident model as its weights are now."""
        if model is not self._model:
            raise ValueError("LmEvalEvaluator scores the model object it was built with")
        results = self.run_tasks()
        tasks: dict[str, float] = {}
        objectives: dict[str, float] = {}
        for name, terms in self._terms.items():
            for term in terms:
                tasks[term.score_key] = _value(results, term)
            objectives[name] = weighted_mean([(tasks[t.score_key], t.weight) for t in terms])
        return Scores(tasks=tasks, objectives=objectives)

    def run_tasks(self) -> dict[str, dict[str, Any]]:
        """One harness pass over every task: lm-eval's ``results`` dict (task -> metrics)."""

        seed = self._spec.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for loaded in self._tasks.values():
            loaded.task.set_fewshot_seed(seed=seed)  # same few-shot examples on every call
        with _without_progress_bars():
            out = evaluate(
                lm=self.lm,
                task_dict=self._task_dict,
                limit=self._limit,
                samples=self._samples or None,
                bootstrap_iters=0,
                log_samples=False,
            )
        return out["results"]


@contextlib.contextmanager
def _without_progress_bars() -> Iterator[None]:
    """Drop lm-eval's per-call progress bars (two per task per trial); pass other stderr on."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        kept = [
            line
            for line in buffer.getvalue().replace("\r", "\n").splitlines()
            if line.strip() and "%|" not in line
        ]
        if kept:
            print("\n".join(kept), file=sys.stderr)


def hold_docs_in_memory(task: Any) -> None:
    """Keep a task's evaluation split as a list of dicts instead of an Arrow dataset.

    lm-eval walks the evaluation documents twice per call (requests, then metrics); decoding
    Arrow rows each time was about a third of the harness's own time on the demo tasks. Tasks
    with a ``process_docs`` hook keep their dataset (the hook expects one).
    """
    dataset = getattr(task, "dataset", None)
    config = task.config
    split = config.test_split if config.test_split else config.validation_split
    if config.process_docs is None and isinstance(dataset, dict) and split in dataset:
        dataset[split] = [dict(doc) for doc in dataset[split]]


def _value(results: dict[str, dict[str, Any]], term: ObjectiveTerm) -> float:
    metrics = results.get(term.task, {})
    if term.results_key not in metrics:
        have = sorted(k for k in metrics if "_stderr" not in k and k != "alias")
        raise UserError(
            f"task {term.task!r} reported no {term.results_key!r}; it reported: {', '.join(have)}"
        )
    value = float(metrics[term.results_key])
    if math.isnan(value):
        raise UserError(
            f"task {term.task!r}: metric {term.results_key!r} is NaN (no scorable examples?)"
        )
    return value
