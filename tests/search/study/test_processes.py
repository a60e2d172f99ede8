"""Worker processes (search.study.processes) in a real launch (SQLite, the tiny pool): Ctrl-C to
the whole process group stops every worker and leaves no trial running; a launcher killed by
SIGKILL takes its workers with it and their trials are failed and queued again."""

from __future__ import annotations

import os
import signal
from typing import Any

import optuna
import pytest

from tests.search.study_fixtures import (
    build_pool_and_tasks,
    complete,
    group_members,
    launch_in_group,
    study_config,
    trials,
    wait_for,
    write_config,
)

TRIES = 5  # Ctrl-C tries in the test; bench/stops.py runs 20 and times them


@pytest.fixture(scope="module")
def pool_paths(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("stops")
    return {"root": root, **build_pool_and_tasks(root, tiny_zoo)}


def retries_before(t: optuna.trial.FrozenTrial) -> list[int]:
    """The failed trials ``t`` retried (Optuna's retry callback keeps the chain)."""
    return list(t.system_attrs.get("retry_history", []))


def queued_again(
    t: optuna.trial.FrozenTrial, ts: list[optuna.trial.FrozenTrial]
) -> optuna.trial.FrozenTrial | None:
    """The trial that retries the failed trial ``t``, if any."""
    return next((r for r in ts if t.number in retries_before(r)), None)


def running(name: str, storage: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials(name, storage) if t.state == optuna.trial.TrialState.RUNNING]


def test_ctrl_c_stops_every_worker_and_leaves_no_trial_running(
    pool_paths: dict[str, Any],
) -> None:
    """SIGINT to the launch's process group while its two workers run trials, TRIES times (each
    try resumes the same study); every time: exit 130, no process of the group left, no trial
    RUNNING, the interrupted trials failed and queued again."""
    storage = f"sqlite:///{pool_paths['root'] / 'studies' / 'ctrl_c.db'}"
    data = study_config(pool_paths, "ctrl_c", storage, budget={"n_trials": 500})
    config = write_config(pool_paths["root"] / "ctrl_c.yaml", data)
    for attempt in range(TRIES):
        before = len(complete(trials("ctrl_c", storage)))
        proc = launch_in_group(config, "--workers", "2", cwd=pool_paths["root"])
        wait_for(
            lambda before=before: len(complete(trials("ctrl_c", storage))) >= before + 2,
            f"two more trials (try {attempt})",
            proc,
        )
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)  # a guard, not a timed assertion
        assert proc.returncode == 130, err
        assert "Traceback" not in err, err
        pgid = proc.pid
        wait_for(lambda pgid=pgid: not group_members(pgid), "the workers to exit", limit_s=60)
        assert not running("ctrl_c", storage), f"try {attempt}: {err}"
    ts = trials("ctrl_c", storage)
    for t in ts:
        if t.state == optuna.trial.TrialState.FAIL:  # interrupted: queued again (max_retry)
            assert queued_again(t, ts) or len(retries_before(t)) >= data["workers"]["max_retry"]


def test_a_launcher_killed_takes_its_workers_with_it(pool_paths: dict[str, Any]) -> None:
    """SIGKILL to the launcher alone: its workers stop (they would otherwise run on as
    orphans), their trials are failed and queued again, and the next launch finishes the
    budget exactly."""
    storage = f"sqlite:///{pool_paths['root'] / 'studies' / 'killed.db'}"
    data = study_config(pool_paths, "killed", storage, budget={"n_trials": 400})
    config = write_config(pool_paths["root"] / "killed.yaml", data)
    proc = launch_in_group(config, "--workers", "2", cwd=pool_paths["root"])
    wait_for(lambda: len(complete(trials("killed", storage))) >= 2, "two trials", proc)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()  # the workers write to the same pipe: read until they exit
    wait_for(lambda: not group_members(proc.pid), "the orphaned workers to exit", limit_s=60)
    ts = trials("killed", storage)  # no process of the launch is left to change them
    assert not running("killed", storage), err
    failed = [t for t in ts if t.state == optuna.trial.TrialState.FAIL]
    for t in failed:  # the trials the workers held: queued again with the same parameters
        retry = queued_again(t, ts)
        assert retry is not None and t.params.items() <= retry.params.items()
