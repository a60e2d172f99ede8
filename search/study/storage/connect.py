"""Opening the study's RDB storage: SQLite for one host, PostgreSQL for several."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.pool
from sqlalchemy.engine import make_url

from search.errors import UserError

if TYPE_CHECKING:
    from search.study.config import StudyConfig, WorkersConfig


class FirstLineOnly(logging.Filter):
    """Keeps the first line of a warning that Optuna's RDB storage logs over many lines.

    When a query fails (a PostgreSQL restart, a host cut off), Optuna warns "Caught an error from
    sqlalchemy: ..." quoting the failed SQL and its parameters over a dozen lines before it tries
    again; the outage itself is told in one line (``storage/outage.py``). Logging has no setting
    for this, hence the filter on Optuna's storage logger (installed by :func:`connect`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\n" in message:
            record.msg, record.args = message.splitlines()[0], None
        return True


STORAGE_LOGGER = logging.getLogger("optuna.storages._rdb.storage")


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Hide Optuna's "experimental feature" warnings for the APIs this module relies on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental.*")
        yield


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URL (relative to the working directory)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///") :])


def redact(url: str) -> str:
    """The URL with any password hidden, for messages."""

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: nothing to hide
        return url


def open_storage(
    cfg: StudyConfig, url: str | None = None, *, create: bool = False
) -> optuna.storages.RDBStorage:
    """The study's RDB storage with heartbeats and retry of a dead worker's trial.

    Args:
        cfg: the study config (``workers`` section: heartbeat, grace period, retries).
        url: overrides ``cfg.storage``.
        create: allow creating a missing SQLite file (``launch`` only); otherwise a missing
            file is a ``UserError`` and nothing is written.
    """
    return connect(url or cfg.storage, cfg.workers, create=create)


def connect(
    url: str, workers: WorkersConfig | None = None, *, create: bool = False
) -> optuna.storages.RDBStorage:
    """Open an Optuna RDB storage by its plain URL (``sqlite:///…``, ``postgresql://…``).

    ``postgresql://`` is what every Optuna tool expects; SQLAlchemy maps it to psycopg 3, which
    merge-search depends on. With ``workers`` the storage writes heartbeats and retries the
    trial of a worker that died (at most ``workers.max_retry`` times); without, it is a plain
    reader (the dashboard); on PostgreSQL its connections are also closed after that long a
    silence (:func:`silence_limits`, the grace period: a host cut off from the network). A
    missing SQLite file is a ``UserError`` unless ``create``.
    """

    if not any(isinstance(f, FirstLineOnly) for f in STORAGE_LOGGER.filters):
        STORAGE_LOGGER.addFilter(FirstLineOnly())
    db = sqlite_path(url)
    engine_kwargs: dict[str, Any] = {}
    if db is not None:
        if not db.is_file():
            if not create:
                raise UserError(
                    f"storage: {db} does not exist; create the study with `merge-search launch`"
                )
            db.parent.mkdir(parents=True, exist_ok=True)
        # several worker processes share the file: wait for its write lock instead of failing
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
        if workers is not None:
            grace = workers.grace_s or 2 * workers.heartbeat_s
            engine_kwargs["connect_args"] = silence_limits(url, grace)
    try:
        with quiet_experimental():
            liveness: dict[str, Any] = {}
            if workers is not None:
                liveness = {
                    "heartbeat_interval": workers.heartbeat_s,
                    "grace_period": workers.grace_s or 2 * workers.heartbeat_s,
                    "heartbeat_stale_trial_callback": (
                        optuna.storages.RetryHeartbeatStaleTrialCallback(
                            max_retry=workers.max_retry
                        )
                    ),
                }
            with creation_lock(url, db, create=create):
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **liveness)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # the cause kept: an outage (``is_outage``) is retried by whoever waits it out
        raise UserError(f"storage: cannot open {redact(url)}: {first}") from exc


def silence_limits(url: str, seconds: float) -> dict[str, Any]:
    """psycopg connection settings under which a PostgreSQL connection silent for about
    ``seconds`` is closed, on the server's end and on the worker's.

    A host cut off from the network answers nothing, not even a reset: without these, the
    server keeps the session of a worker cut off inside a transaction for hours (the kernel's
    keepalive default), with its locks, so a worker cut off while it held the budget lock
    would stop every other host's claim; and the worker's own calls would hang for the
    kernel's retransmission limit (about 15 minutes) before ``workers.storage_retry_s`` even
    starts. The server's end: TCP keepalives and ``tcp_user_timeout`` (PostgreSQL 12 or
    later) set for the session through libpq's ``options``; the worker's: libpq's own
    ``keepalives*``, ``tcp_user_timeout`` and ``connect_timeout``. A healthy peer's kernel
    answers keepalive probes however busy the process is, so only silence closes a session.
    Settings the URL already names are kept (its ``options`` come first).
    """
    s = max(2, math.ceil(seconds))  # libpq's connect_timeout is at least 2 s
    probe = max(1, s // 3)
    server = {
        "tcp_keepalives_idle": s,
        "tcp_keepalives_interval": probe,
        "tcp_keepalives_count": 3,
        "tcp_user_timeout": s * 1000,  # milliseconds
    }
    given = make_url(url).query
    options = " ".join(f"-c {k}={v}" for k, v in server.items())
    if isinstance(mine := given.get("options"), str):
        options = f"{mine} {options}"
    client: dict[str, Any] = {
        "keepalives": 1,
        "keepalives_idle": s,
        "keepalives_interval": probe,
        "keepalives_count": 3,
        "tcp_user_timeout": s * 1000,
        "connect_timeout": s,
    }
    return {"options": options, **{k: v for k, v in client.items() if k not in given}}


@contextlib.contextmanager
def file_lock(db: Path) -> Iterator[None]:
    """``flock`` on ``<database>.lock`` beside a SQLite file (released by the operating system
    when the process dies): the one lock file the budget lock and the creation lock share."""
    with open(f"{db}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def creation_lock(url: str, db: Path | None, *, create: bool = False) -> Iterator[None]:
    """One process at a time opens the storage, which creates Optuna's tables in a new
    database and stamps their version (two at once: "UNIQUE constraint failed:
    alembic_version"). SQLite: ``flock`` on ``<database>.lock`` (the budget lock's file; never
    taken while that is held); PostgreSQL: a transaction-level advisory lock.

    A SQLite reader (``create`` false: pareto, export, the dashboard) takes the lock only when the
    file exists: a launch makes it before the database, so a database without it was complete
    before any reader came, and a read command leaves nothing new beside the user's files."""
    if db is not None and not create and not Path(f"{db}.lock").exists():
        yield
        return
    if db is not None:
        with file_lock(db):
            yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": TABLES_KEY})
            yield
    finally:
        engine.dispose()


TABLES_KEY = 0x6D65726765  # "merge": the advisory lock key of creating Optuna's tables


def load_study(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """The existing study named ``cfg.name`` (``UserError`` naming the storage if missing)."""

    try:
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler)
    except KeyError:
        url = getattr(storage, "url", cfg.storage)
        raise UserError(
            f"study {cfg.name!r} not found in {redact(url)}; "
            "create it with `merge-search launch CONFIG`"
        ) from None
