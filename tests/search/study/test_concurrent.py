"""Processes started at the same instant on one study: it is created once, with its signature,
and nobody is refused (SQLite and the PostgreSQL at 127.0.0.1:5432); two launches on one study
score no plan twice."""

from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest

from search.study.record import TrialRecord
from tests.search.study_fixtures import (
    build_pool_and_tasks,
    cli,
    complete,
    postgres_or_skip,
    study_config,
    trials,
    write_config,
)

STARTERS = 6  # processes racing to create one study


@pytest.fixture(scope="module")
def pool_paths(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("concurrent")
    return {"root": root, **build_pool_and_tasks(root, tiny_zoo)}


def start_at_once(config: str, barrier: Any, results: Any) -> None:
    """One racing starter: open the storage (creating a new SQLite file), create or resume."""
    from search.engine.pool import CheckpointPool
    from search.study.config import load_config
    from search.study.space import SearchSpace
    from search.study.storage import create_or_resume, load_checked, open_storage, signature

    cfg = load_config(config)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model)
    space = SearchSpace.build(cfg, pool.names)
    barrier.wait()
    try:
        storage = open_storage(cfg, create=True)
        _, created = create_or_resume(cfg, storage, space, pool.identity.fingerprint(), config)
        load_checked(cfg, storage, signature(cfg, space, pool.identity.fingerprint()), config)
        results.put(("created" if created else "resumed", ""))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_starters_at_the_same_instant_create_the_study_once(
    pool_paths: dict[str, Any], backend: str
) -> None:
    name = f"race_{uuid.uuid4().hex[:12]}"
    if backend == "postgresql":
        storage = postgres_or_skip()
    else:
        storage = f"sqlite:///{pool_paths['root'] / 'studies' / f'{name}.db'}"  # a new file
    config = write_config(
        pool_paths["root"] / f"{name}.yaml", study_config(pool_paths, name, storage)
    )
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(STARTERS), ctx.Queue()
    procs = [
        ctx.Process(target=start_at_once, args=(str(config), barrier, results))
        for _ in range(STARTERS)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]  # a guard, not a timed assertion
    for p in procs:
        p.join()
    assert sorted(kind for kind, _ in outcomes) == ["created"] + ["resumed"] * (STARTERS - 1), (
        outcomes
    )
    study = optuna.load_study(study_name=name, storage=storage)
    assert {"fingerprint", "search_space", "scoring", "config"} <= set(study.user_attrs)
    seeds = 1 + len(pool_paths["checkpoints"])  # uniform + singles, enqueued once
    assert len(study.get_trials(deepcopy=False)) == seeds


def test_two_launches_at_once_on_a_new_study_score_no_plan_twice(
    pool_paths: dict[str, Any],
) -> None:
    """Two `launch` commands started together on a brand-new SQLite file: one creates the
    study, the other resumes it; their workers' samplers differ, so the budget is spent on
    distinct plans, and the summaries count what was reused."""
    name = f"pair_{uuid.uuid4().hex[:12]}"
    storage = f"sqlite:///{pool_paths['root'] / 'studies' / f'{name}.db'}"
    data = study_config(
        pool_paths,
        name,
        storage,
        budget={"n_trials": 10},
        seed_trials=[],
        sampler={"name": "random", "seed": 0},
    )
    config = write_config(pool_paths["root"] / f"{name}.yaml", data)
    procs = [cli("launch", str(config), cwd=Path(pool_paths["root"])) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]  # a guard
    assert [p.returncode for p in procs] == [0, 0], outputs
    errs = "".join(err for _, err in outputs)
    assert errs.count(f"study {name!r} created") == 1
    assert errs.count(f"study {name!r} resumed") == 1
    ts = complete(trials(name, storage))
    assert len(ts) == 10
    records = [TrialRecord.from_trial(t) for t in ts]
    assert len({r.worker for r in records}) == 2  # both launches ran trials
    keys = [r.plan_key for r in records if r.duplicate_of is None]
    assert len(keys) == len(set(keys))  # no plan scored twice
    assert all(r.duplicate_of is None for r in records)
