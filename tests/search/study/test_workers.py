"""Several workers on PostgreSQL: an exact budget, and a killed worker's trial retried.

Needs PostgreSQL at 127.0.0.1:5432 (database ``test``); skipped with the reason when unreachable.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from typing import Any

import optuna
import pytest
from study_fixtures import (
    build_pool_and_tasks,
    cli,
    complete,
    study_config,
    trials,
    wait_for,
    write_config,
)

from search.cli import main

pytestmark = pytest.mark.postgres

ROLES = ("postgres", "root")


def _postgres_url() -> str | None:
    import sqlalchemy

    for role in ROLES:
        url = f"postgresql://{role}@127.0.0.1:5432/test"
        try:
            engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
            with engine.connect():
                pass
            engine.dispose()
            return url
        except Exception:  # noqa: BLE001, S112 - any failure means: not usable here
            continue
    return None


@pytest.fixture(scope="module")
def postgres() -> str:
    url = _postgres_url()
    if url is None:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432/test as {' or '.join(ROLES)}")
    return url


@pytest.fixture(scope="module")
def pool_paths(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("workers")
    return {"root": root, **build_pool_and_tasks(root, tiny_zoo)}


def _fresh(pool_paths: dict[str, Any], postgres: str, **extra: Any) -> tuple[str, Any]:
    name = f"c1_{uuid.uuid4().hex[:12]}"
    data = study_config(pool_paths, name, postgres, **extra)
    return name, write_config(pool_paths["root"] / f"{name}.yaml", data)


def test_two_workers_finish_exactly_n_trials(pool_paths: dict[str, Any], postgres: str) -> None:
    name, config = _fresh(pool_paths, postgres, budget={"n_trials": 8}, seed_trials=["uniform"])
    assert main(["launch", str(config), "--workers", "2"]) == 0
    ts = trials(name, postgres)
    assert len(ts) == 8  # no extra trial was ever created
    assert len(complete(ts)) == 8
    assert sorted(t.number for t in ts) == list(range(8))
    assert len({t.user_attrs["worker"] for t in ts}) == 2  # both workers took part


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
        pool.fingerprint(),
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
                    and t.user_attrs.get("worker") == tag
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
    assert retry[0].user_attrs.get("seed_trial") == dead.user_attrs.get("seed_trial")
    assert not [
        t
        for t in ts
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]
