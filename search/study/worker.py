"""A worker: one resident model and one evaluator, scoring trials until the budget is spent.

The loop, top to bottom: claim a trial under the budget lock
(:func:`search.study.storage.claim_trial`), turn its suggestions into a
:class:`~search.engine.plan.MergePlan`, reuse the scores if the same plan
was already scored in the study, else materialize the merge in place and evaluate it, record
what the trial did (user attrs below), tell Optuna the objective values. A heartbeat runs while
the trial does, so a worker that dies leaves a trial that goes stale and is retried.

Trial user attrs: ``plan`` (``MergePlan.to_dict()``), ``plan_key``, ``params`` (the method's
parameters), ``coefficients`` ({checkpoint: [coefficient per layer group]} as applied),
``task_scores`` ({"task/metric": value}), ``examples_scored`` (examples this trial scored, summed
over tasks; 0 when it reused a scored plan), ``merge_s``, ``eval_s``, ``duplicate_of`` (trial
number, only when the plan was already scored), ``constraints`` (one value per bound, <= 0
feasible; only with constraints), ``worker`` (host:pid), and ``seed_trial`` on seed trials.
The study's ``examples_per_evaluation`` user attr is what one full evaluation scores.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import TrialState

from evaluators import build_evaluator
from search.engine.device import set_cpu_threads
from search.engine.materialize import effective_weights, materialize
from search.engine.pool import CheckpointPool
from search.engine.registry import METHODS
from search.errors import UserError
from search.study.space import SearchSpace
from search.study.storage import (
    EXAMPLES_ATTR,
    EXAMPLES_SCORED,
    Budget,
    Heartbeat,
    claim_trial,
    trial_counts,
)

if TYPE_CHECKING:
    from evaluators.base import Evaluator, Scores
    from search.engine.plan import MergePlan
    from search.study.config import Split, StudyConfig

POLL_S = 2.0  # how often an idle worker looks for retried trials while others still run


@dataclass
class Runtime:
    """What one worker holds: the pool, ONE resident model and tokenizer, ONE evaluator."""

    cfg: StudyConfig
    pool: CheckpointPool
    model: Any
    tokenizer: Any
    evaluator: Evaluator
    objective_names: tuple[str, ...]

    @classmethod
    def create(
        cls,
        cfg: StudyConfig,
        heldout: bool = False,
        threads: int | None = None,
        *,
        split: Split | None = None,
    ) -> Runtime:
        """Open the pool, read its tensors, build the model and the evaluator (the slow part, once).

        Args:
            cfg: the study config.
            heldout: score the held-out objectives (``cfg.heldout_objectives()``) instead.
            threads: torch's CPU threads for this worker (default: ``workers.threads``, when set).
            split: which objectives to score (``cfg.split_objectives``): ``"search"``,
                ``"heldout"`` or ``"test"``; overrides ``heldout``.
        """
        set_cpu_threads(cfg.device, threads or cfg.workers.threads)
        split = split or ("heldout" if heldout else "search")
        objectives = cfg.split_objectives(split)
        if not objectives:
            what = "held-out" if split == "heldout" else split
            raise UserError(f"eval.{split}: no {what} tasks configured (map each objective task)")
        pool = CheckpointPool.open(
            cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype
        )
        pool.load(base=METHODS[cfg.merge.method].needs_base)
        model, tokenizer = pool.load_model()
        evaluator = build_evaluator(
            objectives, cfg.eval_spec(heldout=split == "heldout"), model, tokenizer
        )
        return cls(cfg, pool, model, tokenizer, evaluator, tuple(o.name for o in objectives))

    def score(self, plan: MergePlan) -> tuple[Scores, float, float]:
        """Materialize ``plan`` into the resident model, evaluate: (scores, merge_s, eval_s)."""
        start = time.perf_counter()
        materialize(plan, self.pool, self.model)
        if self.pool.device.type == "cuda":
            torch.cuda.synchronize(self.pool.device)
        merged = time.perf_counter()
        scores = self.evaluator.evaluate(self.model, self.tokenizer)
        return scores, merged - start, time.perf_counter() - merged

    def examples_per_evaluation(self) -> int:
        """Examples one full evaluation scores, summed over every task (and data file)."""
        return sum(self.evaluator.examples_per_task().values())


@dataclass(frozen=True)
class Scored:
    """What scoring one plan gave: objective values, task scores, examples spent, seconds."""

    values: list[float]
    task_scores: dict[str, float]
    examples: int
    merge_s: float = 0.0
    eval_s: float = 0.0


@dataclass
class TrialObjective:
    """The Optuna objective of one worker: plan -> (reused or fresh) scores -> objective values."""

    cfg: StudyConfig
    runtime: Runtime
    space: SearchSpace
    study: optuna.Study
    scored: dict[str, tuple[int, list[float], dict[str, float]]] = field(default_factory=dict)
    duplicates: int = 0

    def __call__(self, trial: optuna.Trial) -> list[float]:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        plan = self.space.suggest(trial)  # optuna.TrialPruned when a group cannot be normalized
        coefficients = effective_weights(plan)
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("plan_key", plan.key)
        trial.set_user_attr("params", dict(plan.params))
        trial.set_user_attr("coefficients", dict(zip(self.space.names, coefficients, strict=True)))
        prior = self.find_scored(plan.key)
        if prior is not None:
            number, values, task_scores = prior
            trial.set_user_attr("duplicate_of", number)
            scored = Scored(values, task_scores, examples=0)
            self.duplicates += 1
        else:
            scored = self.score(plan)
            self.scored[plan.key] = (trial.number, scored.values, scored.task_scores)
        trial.set_user_attr("task_scores", scored.task_scores)
        trial.set_user_attr(EXAMPLES_SCORED, scored.examples)
        trial.set_user_attr("merge_s", round(scored.merge_s, 4))
        trial.set_user_attr("eval_s", round(scored.eval_s, 4))
        if self.cfg.constraints:
            by_name = dict(zip(self.cfg.objective_names, scored.values, strict=True))
            trial.set_user_attr("constraints", self.cfg.constraint_values(by_name))
        return scored.values

    def score(self, plan: MergePlan) -> Scored:
        """Materialize and evaluate ``plan``: the one place a trial spends examples.

        Today every trial pays one full evaluation (``Runtime.examples_per_evaluation``).
        """
        scores, merge_s, eval_s = self.runtime.score(plan)
        return Scored(
            values=[float(scores.objectives[name]) for name in self.cfg.objective_names],
            task_scores={k: float(v) for k, v in scores.tasks.items()},
            examples=self.runtime.examples_per_evaluation(),
            merge_s=merge_s,
            eval_s=eval_s,
        )

    def find_scored(self, key: str) -> tuple[int, list[float], dict[str, float]] | None:
        """(trial number, values, task scores) of a completed trial with this plan, if any."""
        if key in self.scored:
            return self.scored[key]
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("plan_key") == key and "duplicate_of" not in t.user_attrs:
                found = (t.number, list(t.values), dict(t.user_attrs.get("task_scores", {})))
                self.scored[key] = found
                return found
        return None


@dataclass
class WorkerResult:
    """What one worker did."""

    n_trials: int = 0  # trials this worker finished (complete or pruned)
    n_duplicates: int = 0  # of those, plans already scored in the study
    stopped: str = "budget"  # "budget" | "timeout"


def run_worker(
    cfg: StudyConfig,
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    runtime: Runtime,
    *,
    n_trials: int | None = None,
    deadline: float | None = None,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
) -> WorkerResult:
    """Claim and run trials until the study's budget is spent (or ``deadline``).

    The budget is ``n_trials`` (default ``budget.n_trials``) finished trials and, with
    ``budget.examples``, that many examples scored (:class:`~search.study.storage.Budget`).
    While the budget is taken but other workers still run trials, the worker waits: if one of
    them dies, its trial goes stale, is re-queued, and this worker runs it.

    Args:
        deadline: ``time.time()`` after which no new trial is started (``budget.timeout_s``).
        on_trial: called with each trial this worker finishes (progress display).
    """
    space = SearchSpace.build(cfg, runtime.pool.names)
    objective = TrialObjective(cfg, runtime, space, study)
    per_trial = runtime.examples_per_evaluation()
    if study.user_attrs.get(EXAMPLES_ATTR) != per_trial:
        study.set_user_attr(EXAMPLES_ATTR, per_trial)
    budget = Budget(
        n_trials if n_trials is not None else cfg.budget.n_trials, cfg.budget.examples, per_trial
    )
    result = WorkerResult()
    while True:
        if deadline is not None and time.time() >= deadline:
            result.stopped = "timeout"
            break
        trial = claim_trial(study, storage, budget)
        if trial is None:
            if trial_counts(study).get("running", 0) == 0:
                break
            time.sleep(POLL_S)
            continue
        with Heartbeat(storage, trial._trial_id, cfg.workers.heartbeat_s):
            try:
                values = objective(trial)
            except optuna.TrialPruned:
                frozen = study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # failed as stale meanwhile (a heartbeat came too late): its retry runs
            except BaseException as exc:
                _give_up(
                    study, storage, trial, requeue=isinstance(exc, KeyboardInterrupt | SystemExit)
                )
                raise
            else:
                frozen = study.tell(trial, values, skip_if_finished=True)
        if frozen.state == TrialState.FAIL:
            continue  # the same, found at tell
        result.n_trials += 1
        if on_trial is not None:
            on_trial(frozen)
    result.n_duplicates = objective.duplicates
    return result


def _give_up(
    study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial, *, requeue: bool
) -> None:
    """Fail the trial; when the worker was interrupted, queue the same parameters again."""
    if storage.get_trial(trial._trial_id).state.is_finished():
        return  # failed as stale by another worker, which queued it again
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    retry = storage.get_heartbeat_stale_trial_callback()
    if requeue and retry is not None:
        retry(study, storage.get_trial(trial._trial_id))


def quiet_libraries() -> None:
    """Workers print nothing per trial: the launcher's progress bar speaks for them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lm-eval", "lm_eval", "transformers", "datasets", "evaluate", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from datasets import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()
