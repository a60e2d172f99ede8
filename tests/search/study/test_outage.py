"""A storage outage is a pause, not a crash: a real two-worker launch against a throwaway
PostgreSQL server of the test's own (never the shared one), restarted mid-launch, finishes its
budget by itself; stopped for longer than ``workers.storage_retry_s``, the launch ends with one
line per worker and a non-zero exit, no traceback.

The server runs from ``/usr/lib/postgresql/15/bin`` as the ``postgres`` user (``initdb``
refuses root), listening on a unix socket only, in a temporary folder. Without the binaries the
tests skip with the reason; with ``CI`` set they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc

from search.errors import UserError
from search.study.storage import is_outage, retrying
from tests.search.study_fixtures import (
    build_pool_and_tasks,
    launch_in_group,
    study_config,
    trials,
    wait_for,
    write_config,
)

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _why_not() -> str | None:
    """Why a throwaway server cannot run here, or ``None``."""
    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        return f"no PostgreSQL server binaries in {PG_BIN}"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        return "running as root without `runuser` or a `postgres` user (initdb refuses root)"
    return None


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A throwaway PostgreSQL cluster: unix socket in ``root``, trust auth, no TCP."""

    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.root}&port={self.port}"

    def _as_owner(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=60)

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=''"
        self._as_owner(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "log"),
            "-o",
            options,
            "-w",
            *args,
        )


@pytest.fixture
def server() -> Iterator[Server]:
    why = _why_not()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a throwaway PostgreSQL server: {why}")
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="pg-"))  # short: a socket path has at most 107 bytes
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    srv = Server(root, _free_port())
    srv._as_owner(
        str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust"
    )
    srv.ctl("start")
    try:
        yield srv
    finally:
        try:
            srv.ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(root, ignore_errors=True)


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
