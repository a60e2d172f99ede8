"""A worker: one resident model and one evaluator, scoring trials until the budget is spent.

The loop, top to bottom: claim a trial under the budget lock
(:func:`search.study.storage.claim_trial`), turn its suggestions into a
:class:`~search.engine.plan.MergePlan`, reuse the scores if the same plan
was already scored in the study, else materialize the merge in place and evaluate it, record
what the trial did (user attrs below), tell Optuna the objective values. A heartbeat runs while
the trial does, so a worker that dies leaves a trial that goes stale and is retried.

Trial user attrs: ``plan`` (``MergePlan.to_dict()``), ``plan_key``, ``params`` (the method's
parameters), ``coefficients`` ({checkpoint: [coefficient per layer group]} as applied),
``task_scores`` ({"task/metric": value}), ``examples_scored`` (examples this trial
scored, summed over tasks; 0 when it reused a scored plan), ``stderr`` ({objective: standard
error}),
``task_stderr`` ({"task/metric": standard error}), ``examples`` ({"task/metric": per-example
values, packed by :mod:`search.study.records`}; absent on a stopped trial), ``merge_s``,
``eval_s``, ``duplicate_of``
(trial number, only when the plan was already scored: the scores, standard errors and
per-example values are the earlier trial's), ``constraints`` (one value per bound, <= 0
feasible; only with constraints), ``worker`` (``host:pid:device``, e.g.
``node1:4242:cuda:1``), and ``seed_trial`` on seed trials. With ``eval.racing``:
``rung`` (rungs scored, 1-based) and ``rungs`` (the study's), ``racing_violation`` (0 for a
trial scored in full, > 0 for a stopped one) and, on a stopped trial, ``stopped_by`` (the front
member that beat it; for one objective, the best trial).
The study's ``examples_per_evaluation`` user attr is what one full evaluation scores.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import TrialState

from evaluators import build_evaluator
from search.engine.device import set_cpu_threads, use_device
from search.engine.materialize import effective_weights, materialize
from search.engine.pool import CheckpointPool
from search.engine.registry import METHODS
from search.errors import UserError
from search.study import racing
from search.study.fisher_cache import cache_dir as fisher_cache_dir
from search.study.fisher_cache import calibration, load_fishers
from search.study.records import (
    EXAMPLES_ATTR,
    RUNG_ATTR,
    RUNGS_ATTR,
    STDERR_ATTR,
    STOPPED_ATTR,
    TASK_STDERR_ATTR,
    VIOLATION_ATTR,
    decode_examples,
    encode_examples,
    json_stderr,
)
from search.study.samplers import CONSTRAINTS_ATTR
from search.study.space import SearchSpace
from search.study.storage import (
    EVALUATION_SIZE_ATTR,
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
    """What one worker holds: the pool, ONE resident model and tokenizer, ONE evaluator.

    ``load_s``: seconds spent building each (``pool``, ``model``, ``evaluator``).
    """

    cfg: StudyConfig
    pool: CheckpointPool
    model: Any
    tokenizer: Any
    evaluator: Evaluator
    objective_names: tuple[str, ...]
    load_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        cfg: StudyConfig,
        heldout: bool = False,
        threads: int | None = None,
        *,
        device: str | None = None,
        placement: str | None = None,
        split: Split | None = None,
    ) -> Runtime:
        """Open the pool, read its tensors, build the model and the evaluator (the slow part, once).

        Args:
            cfg: the study config.
            heldout: score the held-out objectives (``cfg.heldout_objectives()``) instead.
            threads: torch's CPU threads for this worker (default: ``workers.threads``, when set).
            device: this worker's device (default ``cfg.device``; the launcher gives each worker
                its GPU, :func:`search.engine.device.worker_device`).
            placement: the pool's placement (default ``cfg.pool``; ``auto`` is decided here, for
                this worker alone).
            split: which objectives to score (``cfg.split_objectives``): ``"search"``,
                ``"heldout"`` or ``"test"``; overrides ``heldout``.
        """
        device = device or cfg.device
        use_device(device)
        set_cpu_threads(device, threads or cfg.workers.threads)
        split = split or ("heldout" if heldout else "search")
        objectives = cfg.split_objectives(split)
        if not objectives:
            what = "held-out" if split == "heldout" else split
            raise UserError(f"eval.{split}: no {what} tasks configured (map each objective task)")
        start = time.perf_counter()
        pool = CheckpointPool.open(
            cfg.checkpoints,
            cfg.base_model,
            device=device,
            dtype=cfg.dtype,
            placement=placement or cfg.pool,
        )
        method = METHODS[cfg.merge.method]
        pool.load(base=method.needs_base)
        loaded = time.perf_counter()
        model, tokenizer = pool.load_model()
        built = time.perf_counter()
        if method.needs_fisher:  # from the cache (the launcher filled it), else computed here
            load_fishers(pool, calibration(cfg), fisher_cache_dir(cfg), model, tokenizer)
        evaluator = build_evaluator(
            objectives, cfg.eval_spec(heldout=split == "heldout"), model, tokenizer
        )
        seconds = {
            "pool": loaded - start,
            "model": built - loaded,
            "evaluator": time.perf_counter() - built,
        }
        if cfg.racing is not None and split == "search":
            evaluator.layout()  # UserError when staged scoring cannot combine these scores
        names = tuple(o.name for o in objectives)
        return cls(cfg, pool, model, tokenizer, evaluator, names, seconds)

    def merge(self, plan: MergePlan) -> float:
        """Materialize ``plan`` into the resident model; seconds taken."""
        start = time.perf_counter()
        materialize(plan, self.pool, self.model)
        if self.pool.device.type == "cuda":
            torch.cuda.synchronize(self.pool.device)
        return time.perf_counter() - start

    def score(self, plan: MergePlan) -> tuple[Scores, float, float]:
        """Materialize ``plan`` into the resident model, evaluate: (scores, merge_s, eval_s)."""
        merge_s = self.merge(plan)
        start = time.perf_counter()
        scores = self.evaluator.evaluate(self.model, self.tokenizer)
        return scores, merge_s, time.perf_counter() - start

    def examples_per_evaluation(self) -> int:
        """Examples one full evaluation scores, summed over every task (and data file)."""
        return sum(self.evaluator.examples_per_task().values())


@dataclass(frozen=True)
class Scored:
    """What a trial recorded of its scores (reused by trials of the same plan)."""

    number: int
    values: list[float]
    task_scores: dict[str, float]
    stderr: dict[str, float | None]
    task_stderr: dict[str, float | None]
    examples: dict[str, dict[str, Any]]  # packed (search.study.records); {} when stopped
    rung: int | None = None  # with racing: rungs scored
    rungs: int | None = None  # with racing: the study's rungs
    stopped_by: int | None = None  # with racing: who stopped it (None: scored in full)
    violation: float = 0.0  # with racing: the racing constraint (search.study.racing.violation)

    @classmethod
    def of(cls, number: int, scores: Scores, names: list[str], **racing: Any) -> Scored:
        return cls(
            number=number,
            values=[float(scores.objectives[name]) for name in names],
            task_scores={k: float(v) for k, v in scores.tasks.items()},
            stderr=json_stderr(scores.stderr),
            task_stderr=json_stderr(scores.task_stderr),
            examples=encode_examples(scores.examples),
            **racing,
        )

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> Scored:
        attrs = trial.user_attrs
        return cls(
            number=trial.number,
            values=list(trial.values),
            task_scores=dict(attrs.get("task_scores", {})),
            stderr=dict(attrs.get(STDERR_ATTR, {})),
            task_stderr=dict(attrs.get(TASK_STDERR_ATTR, {})),
            examples=dict(attrs.get(EXAMPLES_ATTR, {})),
            rung=attrs.get(RUNG_ATTR),
            rungs=attrs.get(RUNGS_ATTR),
            stopped_by=attrs.get(STOPPED_ATTR),
            violation=float(attrs.get(VIOLATION_ATTR, 0.0)),
        )

    def record(self, trial: optuna.Trial) -> None:
        """Set the score attrs on ``trial``."""
        trial.set_user_attr("task_scores", self.task_scores)
        trial.set_user_attr(STDERR_ATTR, self.stderr)
        trial.set_user_attr(TASK_STDERR_ATTR, self.task_stderr)
        if self.examples:
            trial.set_user_attr(EXAMPLES_ATTR, self.examples)
        if self.rung is not None:
            trial.set_user_attr(RUNG_ATTR, self.rung)
            trial.set_user_attr(RUNGS_ATTR, self.rungs)
            trial.set_user_attr(VIOLATION_ATTR, self.violation)
        if self.stopped_by is not None:
            trial.set_user_attr(STOPPED_ATTR, self.stopped_by)


class Racer:
    """Staged scoring of one worker's trials (``eval.racing``; the test: :mod:`.racing`).

    The merged model is scored rung by rung on the documents :func:`.racing.plan_rungs`
    gives (the same on every worker). After each rung but the last: with several objectives
    the trial is compared, paired on its examples, with the study's current front (complete,
    not stopped, feasible trials: their stored per-example values); with one objective
    Optuna's ``WilcoxonPruner`` decides (``trial.report`` of every example's value, step = the
    example's position, then ``should_prune``), at level ``(1 − confidence) / (rungs − 1)``.
    A trial that passes every rung gets the scores a full evaluation gives
    (``Evaluator.combine``).
    """

    def __init__(self, cfg: StudyConfig, runtime: Runtime, study: optuna.Study) -> None:
        assert cfg.racing is not None
        self.cfg, self.runtime, self.study = cfg, runtime, study
        self.layout = runtime.evaluator.layout()
        self.counts = runtime.evaluator.examples_per_task()
        self.full = sum(self.counts.values())
        self.rungs = racing.plan_rungs(self.counts, cfg.racing.rungs, cfg.eval.seed)
        self.objectives = [
            racing.Objective(
                o.name,
                o.direction == "maximize",
                tuple(racing.Term(k, w) for k, w in self.layout.terms[o.name]),
            )
            for o in cfg.objectives
        ]
        self.single = len(self.objectives) == 1
        # one objective: the steps of its terms do not overlap (term j's after term j − 1's)
        self._offsets: dict[str, int] = {}
        offset = 0
        for term in self.objectives[0].terms if self.single else ():
            self._offsets[term.key] = offset
            offset += sum(self.counts[leaf] for leaf in self.layout.leaves[term.key])
        looks = max(1, len(self.rungs) - 1)
        if self.single:
            study.pruner = optuna.pruners.WilcoxonPruner(
                p_threshold=(1.0 - cfg.racing.confidence) / looks,
                n_startup_steps=racing.MIN_EXAMPLES,
            )
        self._decoded: dict[int, dict[str, tuple[float, ...]]] = {}

    def score(self, trial: optuna.Trial) -> Scored:
        """Score the resident merge in rungs; stop when the front (or the best trial) beats it."""
        partial = racing.Partial(self.layout.leaves, self.counts)
        runtime = self.runtime
        stopped_by: int | None = None
        for k, docs in enumerate(self.rungs):
            scores = runtime.evaluator.evaluate(runtime.model, runtime.tokenizer, docs)
            before = {key: len(partial.positions(key)) for key in self.layout.leaves}
            partial.add(docs, scores.examples)
            last = k == len(self.rungs) - 1
            if self.single:
                self._report(trial, partial, before)
                if not last and trial.should_prune():
                    stopped_by = self.study.best_trial.number
            elif not last:
                stopped_by = self._dominated(partial)
            if stopped_by is not None or last:
                break
        rung = k + 1
        common = {"rung": rung, "rungs": len(self.rungs)}
        if stopped_by is None:
            combined = runtime.evaluator.combine(partial.full())
            return Scored.of(trial.number, combined, self.cfg.objective_names, **common)
        return self._stopped(trial.number, partial, stopped_by, common)

    def _report(self, trial: optuna.Trial, partial: racing.Partial, before: dict[str, int]) -> None:
        """One objective: every new example's value as an intermediate value (its own step)."""
        values = partial.values()
        for term in self.objectives[0].terms:
            where = partial.positions(term.key)
            for i in range(before[term.key], len(values[term.key])):
                trial.report(float(values[term.key][i]), self._offsets[term.key] + where[i])

    def _dominated(self, partial: racing.Partial) -> int | None:
        members = self._front(partial)
        if not members:
            return None
        z = racing.z_value(self.cfg.racing.confidence, len(members), len(self.rungs) - 1)
        return racing.dominated_with_confidence(self.objectives, partial.values(), members, z)

    def _front(self, partial: racing.Partial) -> dict[int, dict[str, Any]]:
        """The current front's values at the candidate's examples, by trial number."""
        rows: dict[str, optuna.trial.FrozenTrial] = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            attrs = t.user_attrs
            if (
                EXAMPLES_ATTR not in attrs
                or STOPPED_ATTR in attrs
                or any(c > 0 for c in attrs.get(CONSTRAINTS_ATTR, ()))
            ):
                continue
            rows.setdefault(str(attrs.get("plan_key", t.number)), t)
        trials = list(rows.values())
        maximize = [o.maximize for o in self.objectives]
        members = {}
        for i in racing.front([t.values for t in trials], maximize):
            t = trials[i]
            if t.number not in self._decoded:
                self._decoded[t.number] = decode_examples(t.user_attrs[EXAMPLES_ATTR])
            values = partial.at(self._decoded[t.number])
            if values is not None:
                members[t.number] = values
        return members

    def _stopped(
        self, number: int, partial: racing.Partial, by: int, common: dict[str, Any]
    ) -> Scored:
        """A stopped trial's record: its scores over the examples it scored (the evaluator's own
        reduction, ``Evaluator.combine``), without their per-example values."""
        scores = self.runtime.evaluator.combine(partial.values())
        scored = Scored.of(number, scores, self.cfg.objective_names, stopped_by=by, **common)
        return replace(scored, examples={}, violation=racing.violation(partial.scored, self.full))

    def spent(self, scored: Scored) -> int:
        """Examples a trial scored: every rung it reached."""
        return sum(len(d) for docs in self.rungs[: scored.rung] for d in docs.values())


@dataclass
class TrialObjective:
    """The Optuna objective of one worker: plan -> (reused or fresh) scores -> objective values."""

    cfg: StudyConfig
    runtime: Runtime
    space: SearchSpace
    study: optuna.Study
    scored: dict[str, Scored] = field(default_factory=dict)
    duplicates: int = 0
    racer: Racer | None = None

    def __post_init__(self) -> None:
        if self.cfg.racing is not None and self.racer is None:
            self.racer = Racer(self.cfg, self.runtime, self.study)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        trial.set_user_attr(
            "worker", f"{socket.gethostname()}:{os.getpid()}:{self.runtime.pool.device}"
        )
        plan = self.space.suggest(trial)  # optuna.TrialPruned when a group cannot be normalized
        coefficients = effective_weights(plan)
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("plan_key", plan.key)
        trial.set_user_attr("params", dict(plan.params))
        trial.set_user_attr("coefficients", dict(zip(self.space.names, coefficients, strict=True)))
        scored = self.find_scored(plan.key)
        if scored is not None:
            trial.set_user_attr("duplicate_of", scored.number)
            merge_s = eval_s = 0.0
            spent = 0
            self.duplicates += 1
        else:
            scored, merge_s, eval_s, spent = self.score(plan, trial)
            self.scored[plan.key] = scored
        scored.record(trial)
        trial.set_user_attr(EXAMPLES_SCORED, spent)
        trial.set_user_attr("merge_s", round(merge_s, 4))
        trial.set_user_attr("eval_s", round(eval_s, 4))
        if self.cfg.constraints:
            by_name = dict(zip(self.cfg.objective_names, scored.values, strict=True))
            trial.set_user_attr(CONSTRAINTS_ATTR, self.cfg.constraint_values(by_name))
        return list(scored.values)

    def score(self, plan: MergePlan, trial: optuna.Trial) -> tuple[Scored, float, float, int]:
        """Materialize and evaluate ``plan``: the one place a trial spends examples.

        Returns ``(scored, merge_s, eval_s, examples scored)``: one full evaluation
        (``Runtime.examples_per_evaluation``), or with racing the rungs it reached.
        """
        if self.racer is None:
            scores, merge_s, eval_s = self.runtime.score(plan)
            scored = Scored.of(trial.number, scores, self.cfg.objective_names)
            return scored, merge_s, eval_s, self.runtime.examples_per_evaluation()
        merge_s = self.runtime.merge(plan)
        start = time.perf_counter()
        scored = self.racer.score(trial)
        return scored, merge_s, time.perf_counter() - start, self.racer.spent(scored)

    def find_scored(self, key: str) -> Scored | None:
        """What a completed trial with this plan recorded, if any."""
        if key in self.scored:
            return self.scored[key]
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("plan_key") == key and "duplicate_of" not in t.user_attrs:
                found = Scored.from_trial(t)
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
    if study.user_attrs.get(EVALUATION_SIZE_ATTR) != per_trial:
        study.set_user_attr(EVALUATION_SIZE_ATTR, per_trial)
    budget = Budget(
        n_trials if n_trials is not None else cfg.budget.n_trials, cfg.budget.examples, per_trial
    )
    result = WorkerResult()
    while True:
        if deadline is not None and time.time() >= deadline:
            result.stopped = "timeout"
            break
        trial: optuna.Trial | None = None
        try:
            with stops_held():  # a stop during the claim is delivered here, the trial known
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
                else:
                    frozen = study.tell(trial, values, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # failed as stale meanwhile (a heartbeat came too late): its retry runs
        except BaseException as exc:
            stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
            if stopped:
                stop_redelivery()
            if trial is not None:
                with stops_held():  # a second stop must not leave the trial half given up
                    _give_up(study, storage, trial, requeue=stopped)
            raise
        if frozen.state == TrialState.FAIL:
            continue  # the same, found at tell
        result.n_trials += 1
        if on_trial is not None:
            on_trial(frozen)
    result.n_duplicates = objective.duplicates
    return result


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)  # Ctrl-C; the launcher's stop


@contextmanager
def stops_held() -> Iterator[None]:
    """Hold Ctrl-C and the launcher's stop while a trial changes hands; deliver them after.

    ``study.ask()`` makes the trial RUNNING in the storage before the caller holds it: a stop
    raised between the two (inside the claim, or as the budget lock is released) would end the
    worker with a RUNNING trial that nobody fails or queues again, the interrupted launch then
    reporting it as running. Inside this block the stop signals are only recorded; on leaving
    it they are raised again with the handlers they had, so the exception surfaces in the
    caller's ``try``, which knows the trial. Only the main thread can swap handlers; elsewhere
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum))
        for s in STOP_SIGNALS
        if signal.getsignal(s) is not None  # a handler not set from Python stays as it is
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)  # its handler runs now (SIG_IGN: nothing happens)


def stop_redelivery() -> None:
    """Disarm the launcher's repeated stop (``search.study.launch``): the stop is being handled."""
    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)


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
