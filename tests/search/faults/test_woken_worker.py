"""A woken worker cannot corrupt the study: a worker SIGSTOPped mid-trial past the grace period
has its trial failed as stale and run again by the other worker; woken (SIGCONT), it finds the
trial no longer its own, drops its result with one line and takes the next trial."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import optuna

from search.study.record import TrialRecord
from tests.search.study_fixtures import (
    build_pool_and_tasks,
    complete,
    launch_in_group,
    study_config,
    trials,
    wait_for,
    write_config,
)

State = optuna.trial.TrialState


def test_a_worker_woken_after_its_trial_was_retried_drops_its_result(tiny_zoo, tmp_path):
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    storage = f"sqlite:///{tmp_path / 'woken.db'}"
    n_trials = 16
    data = study_config(paths, "woken", storage, budget={"n_trials": n_trials})
    data["eval"]["limit"] = 10  # trials long enough to be caught mid-way
    config = write_config(tmp_path / "woken.yaml", data)
    launcher = launch_in_group(config, "--workers", "2", cwd=tmp_path)
    try:

        def two_running() -> Any:
            now = [t for t in trials("woken", storage) if t.state == State.RUNNING]
            return now[0] if len(now) == 2 else None  # both workers are at work

        running = wait_for(two_running, "both workers running a trial", launcher)
        tag = TrialRecord.from_trial(running).worker or ""
        pid = int(tag.split(":")[1])
        for _attempt in range(10):  # stop the worker first, then see whether it held a trial
            os.kill(pid, signal.SIGSTOP)
            held = [
                t
                for t in trials("woken", storage)
                if t.state == State.RUNNING and TrialRecord.from_trial(t).worker == tag
            ]
            if held:
                target = held[0]
                break
            # between two trials, or stopped holding SQLite's write lock (nothing can be
            # read): wake it and try again
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.3)
        else:
            raise AssertionError("never stopped the worker mid-trial")
        try:

            def retried() -> Any:
                ts = trials("woken", storage)
                return [t for t in ts if t.system_attrs.get("failed_trial") == target.number]

            retry = wait_for(retried, f"trial {target.number} failed and queued again", launcher)
        finally:
            os.kill(pid, signal.SIGCONT)
        _, err = launcher.communicate(timeout=900)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 0, err
    assert "Traceback" not in err, err
    ts = {t.number: t for t in trials("woken", storage)}
    stopped = ts[target.number]
    assert stopped.state == State.FAIL
    assert stopped.values is None  # never told: its scores are not the study's
    assert len(retry) == 1 and ts[retry[0].number].state == State.COMPLETE
    dropped = re.compile(  # found before its write or tell (FAIL), or refused by one
        rf"trial {target.number} is (FAIL|finished): failed as stale while this worker was paused"
    )
    assert sum(bool(dropped.search(line)) for line in err.splitlines()) == 1, err
    done = complete(list(ts.values()))
    assert len(done) == n_trials
    assert not [t for t in ts.values() if t.state in (State.RUNNING, State.WAITING)]
    for t in done:  # a reused score comes from a trial the study holds as complete
        source = TrialRecord.from_trial(t).duplicate_of
        assert source is None or ts[source].state == State.COMPLETE
