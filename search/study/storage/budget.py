"""The exact budget: trials claimed under a lock held through the storage, examples counted.

A worker claims a trial only under a lock held through the storage (a PostgreSQL advisory lock,
or an ``flock`` on ``<sqlite file>.lock``) after counting the trials that are finished or
running, so concurrent workers never start more than the budget's trials in all, and a resumed
study continues its count. The example budget (``budget.examples``) is counted the same way,
from what the trials themselves recorded (``TrialRecord.examples_scored``), so it too survives a
resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import optuna
import sqlalchemy
from optuna.trial import TrialState

from search.errors import UserError
from search.study.record import TrialRecord
from search.study.storage.connect import file_lock, quiet_experimental, sqlite_path
from search.study.storage.heartbeat import StaleJudge, fail_stale_trials

# Study user attr: examples one full evaluation scores (set by the workers, read by the launcher).
EVALUATION_SIZE_ATTR = "examples_per_evaluation"


@contextlib.contextmanager
def budget_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[None]:
    """Mutual exclusion between workers of one study, held through the storage.

    PostgreSQL: a transaction-level advisory lock keyed by the study name (released when the
    transaction ends, also when the worker dies). SQLite (one host): ``flock`` on
    ``<database>.lock`` beside the file (released by the operating system when the process dies).
    """
    db = sqlite_path(storage.url)
    if db is not None:
        with file_lock(db):
            yield
        return
    if storage.engine.dialect.name != "postgresql":
        raise UserError(
            f"storage: {storage.engine.dialect.name} is not supported; use SQLite or PostgreSQL"
        )

    key = int.from_bytes(
        hashlib.sha256(f"merge-search:{study_name}".encode()).digest()[:8], "big", signed=True
    )
    with storage.engine.begin() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield


@dataclass(frozen=True)
class Budget:
    """What a study may still spend: trials, and optionally examples scored.

    Attributes:
        n_trials: finished (complete or pruned) plus running trials allowed in all.
        examples: examples the finished trials may have scored in all (``budget.examples``);
            ``None``: no example budget.
        per_trial: the most examples one trial scores (one full evaluation). A running trial
            is counted as if it scores that many, so a trial starts only if a full evaluation
            still fits: the study never scores more than ``examples``.
    """

    n_trials: int
    examples: int | None = None
    per_trial: int = 0

    def allows_another(self, trials: Iterable[optuna.trial.FrozenTrial]) -> bool:
        """Whether one more trial fits, given the study's trials (finished and running count)."""
        taken, running, spent = 0, 0, 0
        for t in trials:
            if t.state == TrialState.RUNNING:
                taken, running = taken + 1, running + 1
            elif t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                taken += 1
                spent += TrialRecord.from_trial(t).examples_scored
        if taken >= self.n_trials:
            return False
        if self.examples is None:
            return True
        return spent + (running + 1) * self.per_trial <= self.examples


def claim_trial(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    budget: Budget,
    worker: str | None = None,
    judge: StaleJudge | None = None,
) -> optuna.Trial | None:
    """Start the next trial if ``budget`` allows another (:meth:`Budget.allows_another`).

    Runs under :func:`budget_lock`: fails the trials ``judge`` finds stale first
    (:func:`~search.study.storage.heartbeat.fail_stale_trials`: a heartbeat unchanged for the
    grace period on the judge's own clock; their retries come back as waiting trials, popped
    before new ones; without a judge none are) and running trials that never got a heartbeat,
    counts, asks, and records the first heartbeat (and ``worker``, the trial's
    ``TrialRecord.worker`` tag) so a worker that dies right after the claim still leaves a
    trial that goes stale (or that its launcher releases, :func:`release_trials`). An exception
    inside ``ask`` (a sampler's error, or a stop where the caller does not hold stops as
    :func:`search.study.worker.run_worker` does) would leave a running trial without a
    heartbeat, which never goes stale: it is failed and queued again before the error goes on.
    """

    with budget_lock(storage, study.study_name), quiet_experimental():
        if judge is not None:
            fail_stale_trials(study, storage, judge)
        _fail_without_heartbeat(study, storage)
        trials = study.get_trials(deepcopy=False)
        if not budget.allows_another(trials):
            return None
        running = {t.number for t in trials if t.state == TrialState.RUNNING}
        # we run our own loop (exact budget, our heartbeat thread); Optuna assumes Study.optimize
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        try:
            trial = study.ask()
            storage.record_heartbeat(trial._trial_id)
            if worker is not None:  # who holds it, before anyone else can see it
                TrialRecord(number=trial.number, worker=worker).write(trial)
        except BaseException:
            _undo_claim(study, storage, running)
            raise
        return trial


def _fail_without_heartbeat(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fail and queue again the running trials that never got a heartbeat.

    Every claim records its trial's first heartbeat before it releases the lock, so under the
    lock such a trial belongs to a worker that died inside its claim (a SIGKILL while the
    sampler proposed): Optuna finds stale trials by their heartbeat only and would wait for it
    forever.
    """
    query = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t WHERE t.study_id = :study AND t.state = 'RUNNING' "
        "AND NOT EXISTS (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)"
    )
    with storage.engine.connect() as conn:
        orphans = [row[0] for row in conn.execute(query, {"study": study._study_id})]
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial_id in orphans:
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if retry is not None:
            retry(study, storage.get_trial(trial_id))


def _undo_claim(
    study: optuna.Study, storage: optuna.storages.RDBStorage, running_before: set[int]
) -> None:
    """Fail (and queue again) the trial a broken claim started: under the budget lock, a running
    trial that was not running before the claim is the claim's own."""
    retry = storage.get_heartbeat_stale_trial_callback()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in running_before:
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        if retry is not None:
            retry(study, storage.get_trial(t._trial_id))


def release_trials(
    study: optuna.Study, storage: optuna.storages.RDBStorage, worker: str
) -> list[int]:
    """Fail and queue again the running trials of a worker that is gone (killed, or stopped
    without handing its trial back), under :func:`budget_lock`; their numbers.

    ``worker`` is the start of the trials' ``TrialRecord.worker`` tag (``host:pid:``), which
    :func:`claim_trial` writes under the lock; a trial whose claim died before that has no
    heartbeat either and is failed and queued again too.
    """
    released = []
    with budget_lock(storage, study.study_name):
        _fail_without_heartbeat(study, storage)  # a claim it died inside
        retry = storage.get_heartbeat_stale_trial_callback()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not (TrialRecord.from_trial(t).worker or "").startswith(worker):
                continue
            try:
                if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished meanwhile
            released.append(t.number)
            if retry is not None:
                retry(study, storage.get_trial(t._trial_id))
    return released


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name: ``complete``, ``running``, ``waiting``, ``fail``, ``pruned``."""
    return count_states(study.get_trials(deepcopy=False))


def count_states(trials: Iterable[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """``{state name: how many}`` of ``trials`` (lower-case names, as :func:`trial_counts`)."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def finished(counts: Mapping[str, int]) -> int:
    """Trials that count toward the budget: complete or pruned."""
    return counts.get("complete", 0) + counts.get("pruned", 0)


def examples_spent(trials: Iterable[optuna.trial.FrozenTrial]) -> int:
    """Examples scored by the finished (complete or pruned) trials, as they recorded them."""
    return sum(
        TrialRecord.from_trial(t).examples_scored
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    )


def full_evaluations(study: optuna.Study, spent: int) -> float | None:
    """``spent`` examples as full-evaluation equivalents (``None`` until a worker said how many
    examples one full evaluation scores)."""
    per = study.user_attrs.get(EVALUATION_SIZE_ATTR)
    return spent / per if per else None
