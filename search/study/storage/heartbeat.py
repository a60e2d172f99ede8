"""A trial's heartbeat, written on a thread while the trial runs: a dead worker's trial goes
stale and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues it again."""

from __future__ import annotations

import threading

import optuna

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
