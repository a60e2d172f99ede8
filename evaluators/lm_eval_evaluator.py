"""lm-eval scoring of one resident model whose weights change in place between calls.

Built once: the tasks, groups and tags (:func:`~evaluators.lm_tasks.load_tasks`: datasets held
in memory, metric keys, per-task settings applied) and one
:class:`~evaluators.resident_lm.ResidentHFLM` (lm-eval's ``HFLM``, tokenization memoized,
``max_length`` and the chat template choice kept) wrapping the model object. Each
:meth:`LmEvalEvaluator.evaluate` call reseeds ``random``, ``numpy`` and ``torch`` (as
``simple_evaluate`` does) and the few-shot samplers, runs ``lm_eval.evaluator.evaluate`` on the
prebuilt task dict (groups included, so lm-eval aggregates them; chat template, system
instruction and multi-turn few-shot as lm-eval applies them; no bootstrap; per-sample results
logged; lm-eval's per-call progress bars are dropped) and reduces the results to task scores,
per-example values, standard errors and objective values (:mod:`evaluators.lm_results`).
"""

from __future__ import annotations

import contextlib
import io
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lm_eval.evaluator import evaluate

from evaluators.base import Evaluator, Layout, Scores
from evaluators.lm_results import (
    ObjectiveTerm,
    combine_examples,
    reduce_results,
    reduction_of,
    weighted_mean,
)
from evaluators.lm_tasks import load_tasks
from evaluators.resident_lm import ResidentHFLM
from evaluators.spec import EvalSpec, ObjectiveSpec
from evaluators.stats import REDUCTIONS
from search.errors import UserError

__all__ = ["LmEvalEvaluator", "ObjectiveTerm", "TaskRun", "plan_task_runs", "weighted_mean"]


@dataclass(frozen=True)
class TaskRun:
    """How one leaf task is run: examples scored (``None``: all), few-shot count, generation."""

    name: str
    limit: int | None
    num_fewshot: int | None
    gen_kwargs: tuple[tuple[str, Any], ...] = ()  # sorted (key, value) pairs; () = the task's


def plan_task_runs(
    objectives: Sequence[ObjectiveSpec],
    spec: EvalSpec,
    members: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, TaskRun]:
    """One run per distinct leaf task; the same task asked with different settings is refused.

    Args:
        members: requested name (group, tag or task) -> its leaf tasks; ``None``: every name
            is a leaf task.
    """
    runs: dict[str, TaskRun] = {}
    for obj in objectives:
        for ref in obj.tasks:
            gen = tuple(
                sorted(
                    (k, tuple(v) if isinstance(v, list) else v)
                    for k, v in (ref.gen_kwargs or {}).items()
                )
            )
            for leaf in (members or {}).get(ref.task, (ref.task,)):
                run = TaskRun(
                    name=leaf,
                    limit=ref.limit if ref.limit is not None else spec.limit,
                    num_fewshot=ref.num_fewshot
                    if ref.num_fewshot is not None
                    else spec.num_fewshot,
                    gen_kwargs=gen,
                )
                if runs.setdefault(leaf, run) != run:
                    raise UserError(
                        f"objective {obj.name!r}: task {leaf!r} is used elsewhere with another "
                        f"limit/num_fewshot/gen_kwargs ({runs[leaf]}); use one setting per task"
                    )
    return runs


class _DocIndices(list):
    """Sorted document indices for lm-eval's ``samples``, with O(1) membership.

    lm-eval selects the documents with ``i in samples`` for every document of the task, and
    maps the k-th selected document back to ``samples[k]`` (so the list must be sorted); a
    plain list makes that a scan per document, quadratic in the task's size.
    """

    def __init__(self, indices: Sequence[int]) -> None:
        super().__init__(sorted(set(indices)))
        self._members = frozenset(self)

    def __contains__(self, index: object) -> bool:
        return index in self._members


class LmEvalEvaluator(Evaluator):
    """Scores ``lm_eval`` objectives on the model it was built with.

    Args:
        objectives: objectives with ``evaluator == "lm_eval"``.
        spec: tasks path, limit, batch size, few-shot count, seed, chat settings, context length.
        model: the resident ``transformers`` model (wrapped once in ``HFLM``; with
            ``spec.backend == "vllm"`` its folder and dtype start one vLLM engine, and its
            weights are handed to the engine at every call).
        tokenizer: its tokenizer.

    Raises:
        UserError: unknown task or group member, a metric the task or group does not produce,
            conflicting per-task settings, ``gen_kwargs`` on a task that does not generate, an
            unsafe task without consent, a chat template the tokenizer does not have; all before
            any model call.
    """

    def __init__(
        self, objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
    ) -> None:

        self._objectives = tuple(objectives)
        self._spec = spec
        names = list(dict.fromkeys(r.task for o in objectives for r in o.tasks))
        where = {r.task: f"objective {o.name!r}" for o in objectives for r in o.tasks}
        self._set = load_tasks(
            names, spec.tasks_path, where, confirm_run_unsafe_code=spec.confirm_run_unsafe_code
        )
        self._runs = plan_task_runs(objectives, spec, self._set.members)
        self._terms = {o.name: self._objective_terms(o) for o in objectives}
        for name, run in self._runs.items():
            self._configure(self._set.tasks[name].task, run)
        self._task_dict = self._set.task_dict()
        # One shared limit (the usual case) goes to lm-eval as ``limit``; per-task limits as
        # ``samples`` (the first n documents of each task).
        limits = {run.limit for run in self._runs.values()}
        self._limit = limits.pop() if len(limits) == 1 else None
        self._samples = {
            name: _DocIndices(range(min(run.limit, self._n_docs(name))))
            for name, run in self._runs.items()
            if run.limit is not None and self._limit is None
        }
        self._model = model
        if spec.apply_chat_template:
            check_chat_template(tokenizer, spec.apply_chat_template)  # before an engine starts
        chat_args = _chat_template_args(tokenizer, spec.apply_chat_template)
        if spec.backend == "vllm":
            from evaluators.vllm_lm import ResidentVLLM  # lazy: imports vllm

            self.lm = ResidentVLLM(model, tokenizer, spec, chat_template_args=chat_args)
        else:
            self.lm = ResidentHFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=spec.batch_size,
                max_length=spec.max_length,
                chat_template_args=chat_args,
            )
        if spec.apply_chat_template:
            _check_chat_template(self.lm, tokenizer, spec.apply_chat_template)

    def _objective_terms(self, obj: ObjectiveSpec) -> list[ObjectiveTerm]:
        """The objective's terms: a group is one term, a tag one term per task."""
        where = f"objective {obj.name!r}"
        terms = []
        for ref in obj.tasks:
            if self._set.kinds[ref.task] == "group":
                group = self._set.groups[ref.task]
                label, key = group.resolve_metric(ref.metric, where)
                terms.append(
                    ObjectiveTerm(
                        f"{ref.task}/{label}",
                        ref.task,
                        key,
                        ref.weight,
                        group.leaves,
                        group.weight_by_size[key],
                    )
                )
                continue
            for leaf in self._set.members[ref.task]:
                label, key = self._set.tasks[leaf].resolve_metric(ref.metric, where)
                terms.append(ObjectiveTerm(f"{leaf}/{label}", leaf, key, ref.weight, (leaf,)))
        return terms

    @staticmethod
    def _configure(task: Any, run: TaskRun) -> None:
        """Few-shot count (as ``simple_evaluate`` sets it), generation settings, documents."""
        if run.num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=run.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        if run.gen_kwargs:
            if task.get_config("output_type") != "generate_until":
                raise UserError(
                    f"task {run.name!r}: gen_kwargs apply to generate_until tasks; this one is "
                    f"{task.get_config('output_type')}"
                )
            gen = {k: list(v) if isinstance(v, tuple) else v for k, v in run.gen_kwargs}
            task.set_config(key="generation_kwargs", value=gen, update=True)
        hold_docs_in_memory(task)

    def _n_docs(self, task: str) -> int:
        return len(self._set.tasks[task].task.eval_docs)

    def examples_per_task(self) -> dict[str, int]:
        """How many examples of each leaf task one call scores."""
        return {
            name: len(self._samples[name])
            if name in self._samples
            else min(self._n_docs(name), self._limit or self._n_docs(name))
            for name in self._set.tasks
        }

    def example_layout(self) -> Layout:
        """Terms and leaf tasks per score key; refused unless every term's metric is a mean.

        Raises:
            UserError: an objective's metric is not aggregated by ``mean`` (perplexities, corpus
                metrics): its score is not the mean of its per-example values.
        """
        terms: dict[str, tuple[tuple[str, float], ...]] = {}
        leaves: dict[str, tuple[str, ...]] = {}
        for name, object_terms in self._terms.items():
            terms[name] = tuple((t.score_key, t.weight) for t in object_terms)
            for term in object_terms:
                metric = term.results_key.partition(",")[0]
                label = term.score_key.split("/", 1)[1]
                members = []
                for leaf in term.leaves or (term.task,):
                    reduction = reduction_of(self._set.tasks[leaf].task, metric)
                    if reduction is None and term.is_group:
                        continue  # lm-eval leaves a task without the metric out of its group
                    if reduction is not REDUCTIONS["mean"]:
                        raise UserError(
                            f"objective {name!r}: {leaf}/{metric} is not aggregated by mean, so "
                            "its score is not the mean of its per-example values, so scores "
                            "of example subsets cannot be combined"
                        )
                    members.append(leaf)
                    if term.is_group:
                        leaves[f"{leaf}/{label}"] = (leaf,)
                leaves[term.score_key] = tuple(members)
        return Layout(terms, leaves)

    def combine(self, examples: Mapping[str, Sequence[float]]) -> Scores:
        """Scores from per-example values (:func:`~evaluators.lm_results.combine_examples`)."""
        return combine_examples(examples, self._terms)

    def evaluate(
        self, model: Any, tokenizer: Any, docs: Mapping[str, Sequence[int]] | None = None
    ) -> Scores:
        """Score the resident model as its weights are now (on ``docs`` only, when given)."""
        if model is not self._model:
            raise ValueError("LmEvalEvaluator scores the model object it was built with")
        out = self.run_tasks(docs)
        return reduce_results(out, self._terms, self._set.tasks)

    def sync_weights(self) -> float:
        """Give the harness the resident model's weights as they are now; seconds taken.

        ``hf`` scores the model object itself (nothing to do); ``vllm`` reloads the parameters
        into its engine (:meth:`evaluators.vllm_lm.ResidentVLLM.load_weights`).
        """
        load = getattr(self.lm, "load_weights", None)
        if load is None:
            return 0.0
        start = time.perf_counter()
        load(self._model)
        return time.perf_counter() - start

    def run_tasks(
        self,
        docs: Mapping[str, Sequence[int]] | None = None,
        *,
        log_samples: bool = True,
        sync: bool = True,
    ) -> dict[str, Any]:
        """One harness pass over every task, on the weights the model holds now: lm-eval's
        output (``results``, ``samples``).

        ``log_samples=False`` is the mean-only path (no per-sample records; the benchmark's
        baseline). ``sync=False``: the caller has just called :meth:`sync_weights`.
        """
        if sync:
            self.sync_weights()

        limit, samples = self._limit, self._samples or None
        if docs is not None:
            limit, samples = None, self._docs_samples(docs)
        seed = self._spec.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for loaded in self._set.tasks.values():
            loaded.task.set_fewshot_seed(seed=seed)  # same few-shot examples on every call
        spec = self._spec
        with _without_progress_bars():
            return evaluate(
                lm=self.lm,
                task_dict=self._task_dict,
                limit=limit,
                samples=samples,
                bootstrap_iters=0,
                log_samples=log_samples,
                system_instruction=spec.system_instruction,
                apply_chat_template=spec.apply_chat_template,
                fewshot_as_multiturn=spec.multiturn,
                confirm_run_unsafe_code=spec.confirm_run_unsafe_code,
            )

    def _docs_samples(self, docs: Mapping[str, Sequence[int]]) -> dict[str, _DocIndices]:
        """lm-eval's ``samples`` for a call restricted to ``docs`` (other tasks: as usual)."""
        unknown = sorted(set(docs) - set(self._set.tasks))
        if unknown:
            raise ValueError(
                f"docs: {', '.join(unknown)} not scored here; tasks: {', '.join(self._set.tasks)}"
            )
        samples = {}
        for name in self._set.tasks:
            if name in docs:
                chosen = _DocIndices(docs[name])
                n = self._n_docs(name)
                if not chosen or chosen[0] < 0 or chosen[-1] >= n:
                    raise ValueError(
                        f"docs[{name!r}]: expected indices in [0, {n - 1}], at least one"
                    )
            else:
                chosen = self._samples.get(name) or _DocIndices(
                    range(min(self._n_docs(name), self._limit or self._n_docs(name)))
                )
            samples[name] = chosen
        return samples


def _chat_template_args(tokenizer: Any, template: bool | str) -> dict[str, Any] | None:
    """A template chosen by name among the tokenizer's named templates reaches ``HFLM`` here.

    lm-eval 0.4.13 checks the name (``LM.chat_template``) but renders with the tokenizer's
    default template; passing the name through ``chat_template_args`` makes the tokenizer
    render with the named one.
    """
    named = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and isinstance(named, dict) and template in named:
        return {"chat_template": template}
    return None


def check_chat_template(tokenizer: Any, template: bool | str) -> None:
    """The tokenizer has the chat template asked for; one line naming its checkpoint if not.

    lm-eval's rules (``LM.chat_template``): ``true`` takes the tokenizer's template (its
    ``default`` when it has several, named); a name picks one of several named templates.
    Stricter than lm-eval in one case: a name given for a tokenizer with one unnamed template is
    refused (lm-eval would warn and use that template).

    Raises:
        UserError: ``"<checkpoint folder>: eval.apply_chat_template ..."``.
    """
    source = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    named = getattr(tokenizer, "chat_template", None)
    shown = "true" if template is True else repr(template)
    if not named:
        raise UserError(
            f"{source}: eval.apply_chat_template is {shown} but this tokenizer has no chat "
            "template (tokenizer_config.json 'chat_template' or chat_template.jinja); set "
            "eval.apply_chat_template: false or use a checkpoint whose tokenizer has one"
        )
    if isinstance(named, dict):
        wanted = "default" if template is True else template
        if wanted not in named:
            raise UserError(
                f"{source}: eval.apply_chat_template {shown}: the tokenizer has no chat template "
                f"{wanted!r}; its templates: {', '.join(sorted(named))}"
            )
    elif isinstance(template, str):
        raise UserError(
            f"{source}: eval.apply_chat_template {shown}: this tokenizer has one unnamed "
            "chat template; use apply_chat_template: true"
        )


def _check_chat_template(lm: Any, tokenizer: Any, template: bool | str) -> None:
    """:func:`check_chat_template`, then lm-eval's own check of the choice."""
    check_chat_template(tokenizer, template)
    try:
        lm.chat_template(template)
    except ValueError as exc:
        source = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise UserError(f"{source}: eval.apply_chat_template {template!r}: {exc}") from None


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
