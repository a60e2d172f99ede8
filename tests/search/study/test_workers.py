"""Several workers: an exact budget on SQLite and PostgreSQL, and a killed worker's trial retried.

The PostgreSQL cases need PostgreSQL at 127.0.0.1:5432 (database ``test``; these machines and
CI's run it before a session starts); they skip with the reason when it is unreachable, and
fail instead with ``CI`` set. Trials
here score a longer perplexity file one text at a time, so a trial takes long enough for two
workers to share the budget and for a kill to land inside a trial.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from typing import Any

import optuna
import pytest

from search.cli import main
from search.study.record import TrialRecord
from tests.search.study_fixtures import (
    TEXT,
    build_pool_and_tasks,
    cli,
    complete,
    study_config,
    trials,
    wait_for,
    write_config,
)

SLOW_TEXTS = 600  # lines of perplexity text per trial, scored one at a time


@pytest.fixture(scope="module")
def pool_paths(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("workers")
    paths = {"root": root, **build_pool_and_tasks(root, tiny_zoo)}
    slow = root / "tasks" / "slow.txt"
    slow.write_text("\n".join(TEXT[i % len(TEXT)] for i in range(SLOW_TEXTS)) + "\n")
    paths["text"] = str(slow)
    return paths


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, pool_paths: dict[str, Any]) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres")
    return f"sqlite:///{pool_paths['root'] / 'studies' / f'{uuid.uuid4().hex[:12]}.db'}"


def _fresh(pool_paths: dict[str, Any], storage: str, **extra: Any) -> tuple[str, Any]:
    name = f"c1_{uuid.uuid4().hex[:12]}"
    extra.setdefault("eval", {"limit": None, "batch_size": 1})
    data = study_config(pool_paths, name, storage, **extra)
    return name, write_config(pool_paths["root"] / f"{name}.yaml", data)


def test_two_workers_finish_exactly_n_trials(pool_paths: dict[str, Any], storage_url: str) -> None:
    """The `make demo` case (`--workers 2`): the budget is exact whatever the storage."""
    name, config = _fresh(pool_paths, storage_url, budget={"n_trials": 8}, seed_trials=["uniform"])
    assert main(["launch", str(config), "--workers", "2"]) == 0
    ts = trials(name, storage_url)
    assert len(ts) == 8  # no extra trial was ever created
    assert len(complete(ts)) == 8
    assert sorted(t.number for t in ts) == list(range(8))
    assert len({TrialRecord.from_trial(t).worker for t in ts}) == 2  # both workers took part


@pytest.mark.postgres
def test_a_killed_worker_trial_is_retried_and_the_study_completes(
    pool_paths: dict[str, Any], postgres: str
) -> None:
    """A `worker` joined from another shell dies by SIGKILL mid-trial; its trial is retried."""
    from search.engine.pool import CheckpointPool
    from search.study.config import load_config
    from search.study.space import SearchSpace
    from search.study.storage import create_or_resume, open_storage

    n_trials = 6
    name, config = _fresh(pool_paths, postgres, budget={"n_trials": n_trials})
    cfg = load_config(config)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model)
    create_or_resume(
        cfg,
        open_storage(cfg, create=True),
        SearchSpace.build(cfg, pool.names),
        pool.identity.fingerprint(),
        config,
    )

    killed = None
    for _attempt in range(3):
        worker = cli("worker", str(config), cwd=pool_paths["root"])
        tag = f"{socket.gethostname()}:{worker.pid}:cpu"

        def running_here(tag: str = tag) -> Any:
            return next(
                (
                    t
                    for t in trials(name, postgres)
                    if t.state == optuna.trial.TrialState.RUNNING
                    and TrialRecord.from_trial(t).worker == tag
                ),
                None,
            )

        target = wait_for(running_here, "a trial on the joining worker", worker)
        os.kill(worker.pid, signal.SIGKILL)
        worker.communicate()
        if (
            next(t for t in trials(name, postgres) if t.number == target.number).state
            == optuna.trial.TrialState.RUNNING
        ):
            killed = target  # died mid-trial, as intended
            break
    assert killed is not None, "never caught the joining worker mid-trial"
    assert len(complete(trials(name, postgres))) < n_trials

    assert main(["launch", str(config)]) == 0  # its heartbeat goes stale; the trial is retried

    ts = trials(name, postgres)
    assert len(complete(ts)) == n_trials
    dead = next(t for t in ts if t.number == killed.number)
    assert dead.state == optuna.trial.TrialState.FAIL
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert dead.params.items() <= retry[0].params.items()
    assert TrialRecord.from_trial(retry[0]).seed_trial == TrialRecord.from_trial(dead).seed_trial
    assert not [
        t
        for t in ts
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]
