"""A worker stopped in the middle of claiming a trial, or right after, leaves nothing stuck (real
SQLite storage)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.study import worker
from search.study.config import WorkersConfig, parse_config
from search.study.processes import _release_own, raise_system_exit
from search.study.storage import Budget, claim_trial, connect
from search.study.worker import Runtime, run_worker
from tests.search.study_fixtures import build_pool_and_tasks, study_config


class StopOnce(optuna.samplers.RandomSampler):
    """A sampler whose first ``before_trial`` is interrupted, as SIGTERM -> SystemExit would."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.stopped = False

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not self.stopped:
            self.stopped = True
            raise SystemExit(143)
        super().before_trial(study, trial)


def test_a_claim_interrupted_inside_ask_is_failed_and_queued_again(tmp_path) -> None:
    storage = connect(
        f"sqlite:///{tmp_path / 'claim.db'}", WorkersConfig(heartbeat_s=1), create=True
    )
    study = optuna.create_study(study_name="claim", storage=storage, sampler=StopOnce())
    study.enqueue_trial({"x": 0.25})
    with pytest.raises(SystemExit):
        claim_trial(study, storage, Budget(n_trials=5))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.FAIL, TrialState.WAITING]  # nothing left running, no heartbeat
    trial = claim_trial(study, storage, Budget(n_trials=5))
    assert trial is not None and trial.suggest_float("x", 0, 1) == 0.25  # the same parameters


def test_a_stop_right_after_the_claim_fails_the_trial_and_queues_it_again(
    tiny_zoo: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher's SIGTERM landing after ``study.ask()`` made the trial RUNNING but before the
    worker's ``try`` (here: as the claim returns) must not leave the trial running."""
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    url = f"sqlite:///{tmp_path / 'stop.db'}"
    cfg = parse_config(study_config(paths, "stop", url))
    storage = connect(url, cfg.workers, create=True)
    study = optuna.create_study(
        study_name="stop", storage=storage, directions=["maximize", "minimize"]
    )
    threads = torch.get_num_threads()  # the runtime sets the worker's; restored below
    runtime = Runtime.create(cfg)

    def claim_then_stop(*args: Any, **kwargs: Any) -> optuna.Trial | None:
        trial = claim_trial(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)  # its handler would raise before the caller's try
        return trial

    monkeypatch.setattr(worker, "claim_trial", claim_then_stop)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGALRM)}
    signal.signal(signal.SIGTERM, raise_system_exit)  # the spawned worker's handler
    try:
        with pytest.raises(SystemExit):
            run_worker(cfg, study, storage, runtime, n_trials=3)
    finally:
        torch.set_num_threads(threads)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in previous.items():
            signal.signal(s, handler)
    first, *rest = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL
    assert [t.state for t in rest] == [TrialState.WAITING]
    assert rest[0].system_attrs["failed_trial"] == first.number
    assert first.params == rest[0].params


def test_a_checkpoint_rewritten_during_the_study_stops_the_worker_before_its_next_merge(
    tiny_zoo: Any, tmp_path: Path
) -> None:
    """The worker's per-trial check (one stat per file): the file is named, nothing is scored."""
    from search.engine.plan import MergePlan
    from search.errors import UserError

    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    cfg = parse_config(study_config(paths, "rewrite", f"sqlite:///{tmp_path / 'r.db'}"))
    threads = torch.get_num_threads()
    try:
        runtime = Runtime.create(cfg)
        plan = MergePlan.create("linear", [1.0] * len(runtime.pool.names), {"normalize": True})
        runtime.merge(plan)  # unchanged files: merges, into the resident model
        name = "model.embed_tokens.weight"
        merged = dict(runtime.model.named_parameters())[name]
        torch.testing.assert_close(merged, runtime.pool.stack(name).mean(0))
        target = sorted(Path(cfg.checkpoints[1]).glob("*.safetensors"))[0]
        data = target.read_bytes()
        target.write_bytes(data)  # same bytes, rewritten: a new mtime (and ctime)
        with pytest.raises(UserError, match=f"{target}: changed since the pool was opened"):
            runtime.merge(plan)
    finally:
        torch.set_num_threads(threads)


SLOW_ASK = """
import sys, time, optuna
from search.study.config import WorkersConfig
from search.study.storage import Budget, claim_trial, connect

class Slow(optuna.samplers.RandomSampler):
    def before_trial(self, study, trial):
        print("asking", flush=True)
        time.sleep(600)  # killed here: the trial is RUNNING, its heartbeat not yet written

storage = connect(sys.argv[1], WorkersConfig(heartbeat_s=1))
study = optuna.load_study(study_name="orphan", storage=storage, sampler=Slow(seed=0))
claim_trial(study, storage, Budget(n_trials=5))
"""


def test_a_worker_killed_inside_its_claim_leaves_a_trial_that_is_retried(tmp_path) -> None:
    """SIGKILL while the sampler proposes (the trial RUNNING, no heartbeat yet: Optuna alone
    would never find it stale); the next claim fails it and runs it again."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'orphan.db'}"
    storage = connect(url, WorkersConfig(heartbeat_s=1), create=True)
    study = optuna.create_study(study_name="orphan", storage=storage)
    study.enqueue_trial({"x": 0.5})
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_ASK, url], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "asking\n"
    child.kill()
    child.wait()
    (orphan,) = study.get_trials(deepcopy=False)
    assert orphan.state == TrialState.RUNNING
    trial = claim_trial(study, storage, Budget(n_trials=5))
    assert trial is not None and trial.suggest_float("x", 0, 1) == 0.5  # the same parameters
    first, retry = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL
    assert retry.system_attrs["failed_trial"] == first.number


def test_a_worker_that_exits_holding_a_trial_hands_it_back(tmp_path: Path) -> None:
    """The last guard of a stopping worker (``_release_own``): a trial still RUNNING under this
    process's tag (its hand-back cut short) is failed and queued again with the same parameters;
    another process's trial is left alone."""
    storage = connect(f"sqlite:///{tmp_path / 'own.db'}", WorkersConfig(heartbeat_s=1), create=True)
    study = optuna.create_study(study_name="own", storage=storage)
    host = socket.gethostname()
    mine = claim_trial(study, storage, Budget(n_trials=5), worker=f"{host}:{os.getpid()}:cpu")
    other = claim_trial(study, storage, Budget(n_trials=5), worker=f"{host}:1:cpu")
    assert mine is not None and other is not None
    mine.suggest_float("x", 0, 1)
    _release_own(study, storage)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert by_number[mine.number].state == TrialState.FAIL
    assert by_number[other.number].state == TrialState.RUNNING
    retry = [t for t in by_number.values() if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == by_number[mine.number].params
