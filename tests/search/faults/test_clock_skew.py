"""Skewed clocks: workers whose clocks run 120 s behind and 120 s ahead (libfaketime) join a
launch on SQLite, where each worker's heartbeat is written by its own clock. No healthy trial is
failed as stale, and the trial of a killed worker whose clock runs ahead is still found stale
and run again: staleness is a heartbeat that stopped changing, timed on the judge's own clock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from search.study.record import TrialRecord
from tests.search.study_fixtures import (
    build_pool_and_tasks,
    cli,
    complete,
    create_study,
    study_config,
    trials,
    wait_for,
    write_config,
)

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
State = optuna.trial.TrialState


def skewed_worker(config: Path, offset: str, cwd: Path) -> subprocess.Popen:
    """``merge-search worker CONFIG`` with its clock ``offset`` off (libfaketime)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", LD_PRELOAD=str(FAKETIME), FAKETIME=offset)
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", "worker", str(config)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tag(proc: subprocess.Popen) -> str:
    return f"{socket.gethostname()}:{proc.pid}:"


def worker_of(t: optuna.trial.FrozenTrial) -> str:
    return TrialRecord.from_trial(t).worker or ""


@pytest.mark.skipif(not FAKETIME.is_file(), reason=f"libfaketime not installed ({FAKETIME})")
def test_workers_120_s_behind_and_ahead_neither_fail_healthy_trials_nor_keep_dead_ones(
    tiny_zoo, tmp_path
):
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    storage = f"sqlite:///{tmp_path / 'skew.db'}"
    n_trials = 30
    data = study_config(paths, "skew", storage, budget={"n_trials": n_trials})
    config = write_config(tmp_path / "skew.yaml", data)
    create_study(config)
    killed: list[int] = []
    for _attempt in range(3):  # a worker ahead dies mid-trial: its heartbeat is in the future
        ahead = skewed_worker(config, "+120s", tmp_path)

        def running_ahead(proc: subprocess.Popen = ahead) -> Any:
            return next(
                (
                    t
                    for t in trials("skew", storage)
                    if t.state == State.RUNNING and worker_of(t).startswith(tag(proc))
                ),
                None,
            )

        target = wait_for(running_ahead, "a trial on the worker ahead", ahead)
        os.kill(ahead.pid, signal.SIGKILL)
        ahead.communicate()
        now = next(t for t in trials("skew", storage) if t.number == target.number)
        if now.state == State.RUNNING:
            killed.append(target.number)
            break
    assert killed, "never caught the worker ahead mid-trial"
    # a healthy worker whose beats look 120 s old, and the launch's worker judging it: both load
    # at the same time, then share the remaining trials
    behind = skewed_worker(config, "-120s", tmp_path)
    launcher = cli("launch", str(config), "--workers", "1", cwd=tmp_path)
    _, err = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, err
    _, behind_err = behind.communicate(timeout=300)
    assert behind.returncode == 0, behind_err
    ts = trials("skew", storage)
    assert len(complete(ts)) == n_trials
    assert not [t for t in ts if t.state in (State.RUNNING, State.WAITING)]
    failed = [t for t in ts if t.state == State.FAIL]
    assert [t.number for t in failed] == killed  # no healthy trial failed
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retry) == 1 and retry[0].state == State.COMPLETE
    assert [t for t in complete(ts) if worker_of(t).startswith(tag(behind))], (
        "the worker behind finished no trial: the test shows nothing of it"
    )
