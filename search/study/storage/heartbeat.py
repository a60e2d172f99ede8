"""A trial's heartbeat, and how a dead worker's trial is found stale without comparing clocks.

A running trial's worker records a heartbeat every ``workers.heartbeat_s`` on a thread
(:class:`Heartbeat`). Optuna stores it as a timestamp and its ``fail_stale_trials`` compares that
timestamp with the judging process's ``now``; on SQLite the timestamp is the writing worker's
own clock (``CURRENT_TIMESTAMP`` is computed by the SQLite library in that process), so a worker
whose clock runs behind looks dead to the others and its healthy trials are failed, and one whose
clock runs ahead keeps a dead trial alive. Here the heartbeat is only a value that changes at
every beat: a :class:`StaleJudge` calls a running trial stale when its heartbeat has not changed
for the grace period measured on the judge's own monotonic clock (:func:`fail_stale_trials`).
No two hosts' clocks are ever compared; a trial is judged once a worker has watched it for the
grace period (a worker waiting for others watches every ``POLL_S``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from search.study.storage.outage import is_outage


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds on a daemon thread while in use.

    A beat lost to a storage outage is skipped (:func:`~search.study.storage.outage.is_outage`).
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                # the storage is out: beat again next time; the worker's own calls wait it out


class StaleJudge:
    """Remembers each running trial's last heartbeat value and when (on ``clock``) it changed.

    Args:
        grace_s: a heartbeat unchanged this long means the trial's worker is gone.
        clock: this process's monotonic clock (a test may pass its own).
    """

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (heartbeat, seen changed at)

    @classmethod
    def of(cls, storage: optuna.storages.RDBStorage) -> StaleJudge:
        """A judge with the storage's grace period (Optuna's default: twice the interval)."""
        interval = storage.heartbeat_interval or 60
        return cls(storage.grace_period or 2 * interval)

    def stale(self, beats: Mapping[int, Any]) -> list[int]:
        """The trials of ``beats`` (``{trial id: heartbeat}`` of the running trials) whose
        heartbeat this judge has seen unchanged for more than ``grace_s``."""
        now = self._clock()
        out = []
        for trial_id, beat in beats.items():
            seen = self._seen.get(trial_id)
            if seen is None or seen[0] != beat:
                self._seen[trial_id] = (beat, now)
            elif now - seen[1] > self.grace_s:
                out.append(trial_id)
        for gone in set(self._seen) - set(beats):  # finished: forget
            del self._seen[gone]
        return out


def running_heartbeats(study: optuna.Study, storage: optuna.storages.RDBStorage) -> dict[int, Any]:
    """``{trial id: heartbeat}`` of the study's running trials that have one."""
    query = sqlalchemy.text(
        "SELECT t.trial_id, h.heartbeat FROM trials t JOIN trial_heartbeats h "
        "ON h.trial_id = t.trial_id WHERE t.study_id = :study AND t.state = 'RUNNING'"
    )
    with storage.engine.connect() as conn:
        return {row[0]: row[1] for row in conn.execute(query, {"study": study._study_id})}


def fail_stale_trials(
    study: optuna.Study, storage: optuna.storages.RDBStorage, judge: StaleJudge
) -> list[int]:
    """Fail the running trials ``judge`` finds stale and queue them again (the storage's
    ``heartbeat_stale_trial_callback``, as Optuna's own ``fail_stale_trials`` does); their ids."""
    failed = []
    for trial_id in judge.stale(running_heartbeats(study, storage)):
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile
    retry = storage.get_heartbeat_stale_trial_callback()
    if retry is not None:
        for trial_id in failed:
            retry(study, storage.get_trial(trial_id))
    return failed
