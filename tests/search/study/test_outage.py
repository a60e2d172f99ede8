"""A storage outage is a pause, not a crash: a real two-worker launch against a throwaway
PostgreSQL server of the test's own (never the shared one), restarted mid-launch, finishes its
budget by itself; stopped for longer than ``workers.storage_retry_s``, the launch ends with one
line per worker and a non-zero exit, no traceback.

The server (:mod:`tests.search.pg_server`) listens on a unix socket only. Without the
PostgreSQL binaries the tests skip with the reason; with ``CI`` set they fail instead.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc

from search.errors import UserError
from search.study.storage import is_outage, retrying
from tests.search.pg_server import Server, throwaway_server
from tests.search.study_fixtures import (
    build_pool_and_tasks,
    launch_in_group,
    study_config,
    trials,
    wait_for,
    write_config,
)


@pytest.fixture
def server() -> Iterator[Server]:
    with throwaway_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def pool_paths(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("outage")
    return {"root": root, **build_pool_and_tasks(root, tiny_zoo)}


def polled(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; [] while the server is out."""
    try:
        return trials(name, url)
    except Exception as exc:
        if is_outage(exc):
            return []
        raise


def finished(ts: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in ts if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]


def test_a_server_restarted_mid_launch_is_a_pause(
    pool_paths: dict[str, Any], server: Server
) -> None:
    """``pg_ctl restart -m fast`` while two workers run trials: the launch exits 0 with exactly
    its budget of finished trials, none RUNNING, no traceback."""
    n_trials = 40
    data = study_config(pool_paths, "restart", server.url, budget={"n_trials": n_trials})
    config = write_config(pool_paths["root"] / "restart.yaml", data)
    proc = launch_in_group(config, "--workers", "2", cwd=pool_paths["root"])
    wait_for(lambda: len(finished(polled("restart", server.url))) >= 3, "three trials", proc)
    server.ctl("restart", "-m", "fast")
    assert proc.poll() is None, "the launch ended before the restart: raise n_trials"
    out, err = proc.communicate(timeout=300)  # a guard, not a timed assertion
    assert proc.returncode == 0, err
    assert "Traceback" not in err + out, err
    ts = trials("restart", server.url)
    assert len(finished(ts)) == n_trials, err
    assert not [t for t in ts if t.state == optuna.trial.TrialState.RUNNING]


def test_a_server_down_past_storage_retry_s_ends_the_launch_in_one_line_per_worker(
    pool_paths: dict[str, Any], server: Server
) -> None:
    """The server stopped for longer than ``workers.storage_retry_s``: each worker says in one
    line that the storage is unreachable, the launch exits non-zero, no traceback."""
    workers = {"heartbeat_s": 1, "grace_s": 3, "max_retry": 3, "threads": 1, "storage_retry_s": 3}
    data = study_config(pool_paths, "down", server.url, budget={"n_trials": 400}, workers=workers)
    config = write_config(pool_paths["root"] / "down.yaml", data)
    proc = launch_in_group(config, "--workers", "2", cwd=pool_paths["root"])
    wait_for(lambda: len(finished(polled("down", server.url))) >= 2, "two trials", proc)
    server.ctl("stop", "-m", "fast")
    out, err = proc.communicate(timeout=300)  # a guard, not a timed assertion
    assert proc.returncode != 0, err
    assert "Traceback" not in err + out, err
    for index in (0, 1):
        said = [line for line in err.splitlines() if line.startswith(f"worker {index}: error:")]
        assert len(said) == 1, err
        assert "storage postgresql://postgres@/postgres" in said[0], said
        assert "unreachable for" in said[0], said


def test_sqlite_database_is_locked_is_waited_out(tmp_path: Path) -> None:
    """SQLite's ``database is locked`` (another connection holds the write lock past the busy
    timeout) is an outage: the write is tried again and goes through once the lock is gone;
    a lock held past the limit gives one line naming the storage."""
    db = tmp_path / "locked.db"
    url = f"sqlite:///{db}"
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.1}})
    study = optuna.create_study(study_name="locked", storage=storage)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(Exception) as caught:
        study.set_user_attr("a", 1)
    assert is_outage(caught.value)
    with pytest.raises(
        UserError, match=r"^storage locked\.db unreachable for \d+ s \(database is locked\)$"
    ):
        retrying(lambda: study.set_user_attr("a", 1), "storage locked.db", 0.5)
    threading.Timer(0.5, holder.execute, args=("COMMIT",)).start()
    retrying(lambda: study.set_user_attr("a", 2), "storage locked.db", 60)
    assert optuna.load_study(study_name="locked", storage=url).user_attrs["a"] == 2
    holder.close()


def test_other_storage_errors_are_not_outages(tmp_path: Path) -> None:
    """A SQLite error other than a lock (here: a missing table) is raised at once, not retried."""
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    calls = []

    def query() -> None:
        calls.append(1)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT * FROM trials"))

    with pytest.raises(sqlalchemy.exc.OperationalError, match="no such table"):
        retrying(query, "storage empty.db", 60)
    assert len(calls) == 1
