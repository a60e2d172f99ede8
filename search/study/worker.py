"""A worker: one resident model and one evaluator, scoring trials until the budget is spent.

The loop, top to bottom (:func:`run_worker`): claim a trial under the budget lock
(:func:`search.study.storage.claim_trial`), turn its suggestions into a
:class:`~search.engine.plan.MergePlan`, reuse the scores if the same plan was already scored in
the study, else materialize the merge in place and evaluate it (or let a strategy's scorer score
it), record what the trial did (one :class:`~search.study.record.TrialRecord`), tell
Optuna the objective values. A heartbeat runs while the trial does, so a worker that dies leaves
a trial that goes stale and is retried.

A worker paused or cut off for longer than the grace period finds, when it wakes, its trial failed
as stale and queued again: before each write and the tell it checks that the trial is still
RUNNING and its own (:func:`check_held`, one read of the storage; Optuna refuses a write to a
finished trial in the same transaction as the write), and otherwise drops its result with one
line (:class:`TrialLost`) and takes the next trial. A worker cut off from the network sees an
outage instead (its connections give up on the silence): once the storage is back, handing the
trial back, it finds the trial failed as stale and says so in the same line (:func:`dropped`).

A trial that cannot be scored for what it is (its merge holds NaN or Inf: :class:`TrialFailed`)
is failed with its reason (``TrialRecord.failed``) and not retried; the study goes on.

The study's ``examples_per_evaluation`` user attr is what one full evaluation scores.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import TrialState

from evaluators import build_evaluator
from search.engine.device import set_cpu_threads, use_device
from search.engine.materialize import effective_weights, materialize, nonfinite_tensor
from search.engine.model import load_model
from search.engine.pool import CheckpointPool
from search.engine.registry import MergeMethod
from search.errors import UserError
from search.strategies import get_method
from search.study.notes import trial_note, write_trial_note
from search.study.record import PLAN_FIELDS, TrialRecord
from search.study.space import SearchSpace
from search.study.storage import (
    EVALUATION_SIZE_ATTR,
    Budget,
    Heartbeat,
    Outage,
    StaleJudge,
    claim_trial,
    is_outage,
    redact,
    retrying,
    trial_counts,
)
from search.study.strategy import offered

if TYPE_CHECKING:
    from evaluators.base import Evaluator, Scores
    from search.engine.plan import MergePlan
    from search.study.config import Split, StudyConfig
    from search.study.strategy import Scorer

POLL_S = 2.0  # how often an idle worker looks for retried trials while others still run
FAILED_IN_A_ROW = 20  # trials failed for what they are, one after another, before a worker stops


class TrialLost(Exception):
    """The trial is no longer this worker's to finish: failed as stale (the worker was paused or
    cut off past the grace period) and queued again as a new trial. Its result is dropped."""


def check_held(storage: optuna.storages.RDBStorage, trial: optuna.Trial, worker: str) -> None:
    """:class:`TrialLost` unless ``trial`` is RUNNING and recorded as ``worker``'s (one read)."""
    frozen = storage.get_trial(trial._trial_id)
    holder = TrialRecord.from_trial(frozen).worker
    if frozen.state != TrialState.RUNNING or holder != worker:
        now = frozen.state.name if holder == worker else f"held by {holder}"
        raise TrialLost(f"trial {trial.number} is {now}")


class TrialFailed(Exception):
    """This trial's plan cannot be scored (the message says why): it fails, is not retried (the
    same plan would fail again), and the study goes on."""


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
    split: Split = "search"
    load_s: dict[str, float] = field(default_factory=dict)

    @property
    def method(self) -> MergeMethod:
        """The config's merge method (built in, or provided by a strategy)."""
        return get_method(self.cfg.merge.method)

    @classmethod
    def create(
        cls,
        cfg: StudyConfig,
        split: Split = "search",
        *,
        threads: int | None = None,
        device: str | None = None,
        placement: str | None = None,
    ) -> Runtime:
        """Open the pool, read its tensors, build the model and the evaluator (the slow part, once).

        Args:
            cfg: the study config.
            split: which objectives to score (``cfg.split_objectives``): ``"search"``,
                ``"heldout"`` or ``"test"``.
            threads: torch's CPU threads for this worker (default: ``workers.threads``, when set).
            device: this worker's device (default ``cfg.device``; the launcher gives each worker
                its GPU, :func:`search.engine.device.worker_device`).
            placement: the pool's placement (default ``cfg.pool``; ``auto`` is decided here, for
                this worker alone).
        """
        device = device or cfg.device
        use_device(device)
        set_cpu_threads(device, threads or cfg.workers.threads)
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
        method = get_method(cfg.merge.method)
        pool.load(base=method.needs_base)
        loaded = time.perf_counter()
        model, tokenizer = load_model(pool)
        built = time.perf_counter()
        evaluator = build_evaluator(objectives, cfg.eval_spec(), model, tokenizer)
        names = tuple(o.name for o in objectives)
        runtime = cls(cfg, pool, model, tokenizer, evaluator, names, split)
        for strategy in cfg.strategies:  # e.g. the extras from the cache the launcher filled
            strategy.prepare_runtime(runtime)
        runtime.load_s = {
            "pool": loaded - start,
            "model": built - loaded,
            "evaluator": time.perf_counter() - built,
        }
        return runtime

    def merge(self, plan: MergePlan) -> float:
        """Materialize ``plan`` into the resident model; seconds taken.

        First one ``stat`` per checkpoint file (:meth:`~search.engine.identity.PoolIdentity.
        check_unchanged`): a file rewritten during the study is refused (``UserError``) rather
        than scored unnoticed. A merge holding NaN or Inf raises :class:`TrialFailed`.
        """
        self.pool.identity.check_unchanged()
        start = time.perf_counter()
        materialize(plan, self.pool, self.model, self.method)
        if self.pool.device.type == "cuda":
            torch.cuda.synchronize(self.pool.device)
        seconds = time.perf_counter() - start
        if (name := nonfinite_tensor(self.pool, self.model)) is not None:
            raise TrialFailed(f"the merge holds NaN or Inf values in tensor {name}")
        return seconds

    def score(self, plan: MergePlan) -> tuple[Scores, float, float]:
        """Materialize ``plan`` into the resident model, evaluate: (scores, merge_s, eval_s)."""
        merge_s = self.merge(plan)
        start = time.perf_counter()
        scores = self.evaluator.evaluate(self.model, self.tokenizer)
        return scores, merge_s, time.perf_counter() - start

    def examples_per_evaluation(self) -> int:
        """Examples one full evaluation scores, summed over every task (and data file)."""
        return sum(self.evaluator.examples_per_task().values())


@dataclass
class TrialObjective:
    """The Optuna objective of one worker: plan -> (reused or fresh) scores -> objective values."""

    cfg: StudyConfig
    runtime: Runtime
    space: SearchSpace
    study: optuna.Study
    scored: dict[str, TrialRecord] = field(default_factory=dict)  # plan key -> its scores
    duplicates: int = 0
    scorer: Scorer | None = None  # a strategy that scores in its own way
    storage: optuna.storages.RDBStorage | None = None  # with ``worker``: check_held first
    worker: str | None = None  # this worker's tag (TrialRecord.worker)
    _fresh: tuple[str, TrialRecord] | None = None  # scored by the trial running, until told

    def __post_init__(self) -> None:
        if self.scorer is None:
            scorers = offered(self.cfg.strategies, "scorer")
            self.scorer = scorers[0](self.runtime, self.study) if scorers else None

    def __call__(self, trial: optuna.Trial) -> list[float]:
        with stops_held():  # suggest_* write to the storage
            plan = self.space.suggest(trial)  # optuna.TrialPruned: a group cannot be normalized
        coefficients = effective_weights(plan, self.runtime.method)
        record = TrialRecord(
            number=trial.number,
            worker=worker_tag(self.runtime.pool.device),
            plan=plan.to_dict(),
            plan_key=plan.key,
            params=dict(plan.params),
            coefficients=dict(zip(self.space.names, coefficients, strict=True)),
        )
        with stops_held():  # a stop inside a storage call would leave its session open
            self.check_held(trial)
            record.write(trial, PLAN_FIELDS)  # what was merged, before it is scored
            note = trial_note(plan, self.runtime.pool, self.runtime.method)
            write_trial_note(trial, note)  # the dashboard's
            earlier = self.find_scored(plan.key)
        if earlier is not None:
            self.duplicates += 1
            record = record.with_scores_of(
                earlier, duplicate_of=earlier.number, merge_s=0.0, eval_s=0.0
            )
        else:
            scored, merge_s, eval_s, spent = self.score(plan, trial)
            self._fresh = (plan.key, scored)  # reused once told (:meth:`told`)
            record = record.with_scores_of(
                scored, examples_scored=spent, merge_s=round(merge_s, 4), eval_s=round(eval_s, 4)
            )
        if self.cfg.constraints:
            by_name = dict(zip(self.cfg.objective_names, record.values, strict=True))
            record = dataclasses.replace(
                record, constraints=tuple(self.cfg.constraint_values(by_name))
            )
        with stops_held():
            self.check_held(trial)  # paused past the grace period: its retry runs elsewhere
            record.write(trial, [f for f in record.to_attrs() if f not in PLAN_FIELDS])
        return list(record.values)

    def check_held(self, trial: optuna.Trial) -> None:
        """:func:`check_held` for this worker (nothing without a storage and a worker tag)."""
        if self.storage is not None and self.worker is not None:
            check_held(self.storage, trial, self.worker)

    def told(self, frozen: optuna.trial.FrozenTrial) -> None:
        """The trial running was told: a plan it scored may be reused once it is COMPLETE (a
        dropped result is never a duplicate's source)."""
        fresh, self._fresh = self._fresh, None
        if fresh is not None and frozen.state == TrialState.COMPLETE:
            self.scored[fresh[0]] = dataclasses.replace(fresh[1], number=frozen.number)

    def score(self, plan: MergePlan, trial: optuna.Trial) -> tuple[TrialRecord, float, float, int]:
        """Materialize and evaluate ``plan``: the one place a trial spends examples.

        Returns ``(score fields, merge_s, eval_s, examples scored)``: one full evaluation
        (``Runtime.examples_per_evaluation``), or what the strategy's scorer spent.
        """
        if self.scorer is None:
            scores, merge_s, eval_s = self.runtime.score(plan)
            scored = TrialRecord.of_scores(trial.number, scores, self.cfg.objective_names)
            return scored, merge_s, eval_s, self.runtime.examples_per_evaluation()
        merge_s = self.runtime.merge(plan)
        start = time.perf_counter()
        scored = self.scorer.score(trial)
        return scored, merge_s, time.perf_counter() - start, self.scorer.spent(scored)

    def find_scored(self, key: str) -> TrialRecord | None:
        """What a completed trial with this plan recorded, if any."""
        if key in self.scored:
            return self.scored[key]
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            record = TrialRecord.from_trial(t)
            if record.plan_key == key and record.duplicate_of is None:
                self.scored[key] = record
                return record
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
    on_note: Callable[[str], None] | None = None,
) -> WorkerResult:
    """Claim and run trials until the study's budget is spent (or ``deadline``).

    The budget is ``n_trials`` (default ``cfg.n_trials``) finished trials and, with
    ``budget.examples``, that many examples scored (:class:`~search.study.storage.Budget`).
    While the budget is taken but other workers still run trials, the worker waits: if one of
    them dies, its trial goes stale, is re-queued, and this worker runs it.

    A storage outage (:func:`~search.study.storage.is_outage`) is a pause: the worker backs off
    and tries again for up to ``workers.storage_retry_s``, then fails and queues again the trial
    it held (scored or not: it was not told) and goes on; past that limit, a ``UserError`` (one
    line naming the storage).

    Args:
        deadline: ``time.time()`` after which no new trial is started (``budget.timeout_s``).
        on_trial: called with each trial this worker finishes (progress display).
        on_note: called with a line to show (a result dropped: :class:`TrialLost`).
    """
    space = SearchSpace.build(cfg, runtime.pool.names)
    tag = worker_tag(runtime.pool.device)
    objective = TrialObjective(cfg, runtime, space, study, storage=storage, worker=tag)
    per_trial = runtime.examples_per_evaluation()
    where, limit = f"storage {redact(storage.url)}", cfg.workers.storage_retry_s
    if retrying(lambda: study.user_attrs.get(EVALUATION_SIZE_ATTR), where, limit) != per_trial:
        retrying(lambda: study.set_user_attr(EVALUATION_SIZE_ATTR, per_trial), where, limit)
    budget = Budget(
        n_trials if n_trials is not None else cfg.n_trials, cfg.budget.examples, per_trial
    )
    result = WorkerResult()
    outage: Outage | None = None  # the storage out since this, unless None
    failed_in_a_row = 0  # trials failed for what they are (TrialFailed), one after another
    judge = StaleJudge.of(storage)  # finds a dead worker's trial on this worker's own clock
    while True:
        if deadline is not None and time.time() >= deadline:
            result.stopped = "timeout"
            break
        trial: optuna.Trial | None = None
        try:
            with stops_held():  # a stop during the claim is delivered here, the trial known
                trial = claim_trial(study, storage, budget, worker=tag, judge=judge)
            outage = None
            if trial is None:
                if trial_counts(study).get("running", 0) == 0:
                    break
                time.sleep(POLL_S)
                continue
            with Heartbeat(storage, trial._trial_id, cfg.workers.heartbeat_s):
                try:
                    values = objective(trial)
                except optuna.TrialPruned:
                    with stops_held():
                        frozen = study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                except TrialFailed as exc:
                    with stops_held():
                        TrialRecord(number=trial.number, failed=str(exc)).write(trial, ["failed"])
                        frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    failed_in_a_row += 1
                    if failed_in_a_row >= FAILED_IN_A_ROW:
                        raise UserError(
                            f"{failed_in_a_row} trials in a row failed, the last because {exc}; "
                            "narrow the search space (merge.weights, the method's params)"
                        ) from None
                else:
                    with stops_held():
                        objective.check_held(trial)
                        frozen = study.tell(trial, values, skip_if_finished=True)
                    failed_in_a_row = 0
                objective.told(frozen)
        except (TrialLost, optuna.exceptions.UpdateFinishedTrialError) as exc:
            # failed as stale meanwhile (paused, or cut off past the grace period): its retry
            # runs (or ran) elsewhere; this result is not the study's
            if on_note is not None and trial is not None:
                lost = (
                    str(exc) if isinstance(exc, TrialLost) else f"trial {trial.number} is finished"
                )
                on_note(dropped(lost))
            continue
        except BaseException as exc:
            stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
            if stopped:
                stop_redelivery()  # first: a stop delivered again here would skip the hand-back
            if not is_outage(exc):
                if trial is not None:
                    with stops_held():  # a second stop must not leave the trial half given up
                        _give_up(study, storage, trial, requeue=stopped)
                raise
            outage = outage or Outage(where, limit)
            outage.wait(exc)  # past the limit: UserError, the trial left to go stale
            if trial is not None:  # not told: fail it and queue it again (another may run it)
                with stops_held():
                    give_up = functools.partial(_give_up, study, storage, trial, requeue=True)
                    found = outage.retry(give_up)
                if found is not None and lost_to_staleness(found) and on_note is not None:
                    on_note(dropped(f"trial {trial.number} is FAIL"))  # cut off past the grace
            continue
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
    """Disarm the repeated stop (``search.study.processes``): the stop is being handled."""
    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)


def _give_up(
    study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial, *, requeue: bool
) -> optuna.trial.FrozenTrial | None:
    """Fail the trial; when the worker was interrupted, queue the same parameters again.

    Returns the trial as found when it was already finished (nothing is done then: e.g. failed
    as stale by another worker, which queued it again), else ``None``."""
    frozen = storage.get_trial(trial._trial_id)
    if frozen.state.is_finished():
        return frozen
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    retry = storage.get_heartbeat_stale_trial_callback()
    if requeue and retry is not None:
        retry(study, storage.get_trial(trial._trial_id))
    return None


def lost_to_staleness(frozen: optuna.trial.FrozenTrial) -> bool:
    """A trial found FAIL without a reason of its own (``TrialRecord.failed``): another worker
    failed it as stale (a tell of this worker's that reached the storage before the outage
    left it COMPLETE, PRUNED, or FAIL with its reason)."""
    return frozen.state == TrialState.FAIL and TrialRecord.from_trial(frozen).failed is None


def dropped(lost: str) -> str:
    """The one line of a result dropped because its trial is no longer this worker's."""
    return (
        f"{lost}: failed as stale while this worker was paused or cut off, and queued again; "
        "its result is dropped, taking the next trial"
    )


def worker_tag(device: object) -> str:
    """``host:pid:device``: who runs a trial (``TrialRecord.worker``; the launcher releases a
    killed worker's trials by it, :func:`search.study.storage.release_trials`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{device}"


def quiet_libraries() -> None:
    """Workers print nothing per trial: the launcher's progress bar speaks for them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lm-eval", "lm_eval", "transformers", "datasets", "evaluate", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from datasets import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()
