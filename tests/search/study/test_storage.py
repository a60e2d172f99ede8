"""The study's storage as every Optuna tool opens it: plain URLs, and the fingerprint check."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from search.errors import UserError
from search.study.config import WorkersConfig
from search.study.storage import check_fingerprint, connect, sqlite_path
from tests.search.report_fixtures import dashboard_get


def _dashboard_studies(url: str) -> list[str]:
    """The study names the optuna-dashboard command of this venv serves for ``url``."""
    return [
        s["study_name"] for s in json.loads(dashboard_get(url, "/api/studies"))["study_summaries"]
    ]


@pytest.mark.postgres
def test_a_plain_postgresql_url_works_with_optuna_and_optuna_dashboard(postgres: str) -> None:
    """What a user types in a notebook or a shell, with the project's dependencies only."""
    assert postgres.startswith("postgresql://")
    name = f"plain_{uuid.uuid4().hex[:12]}"
    study = optuna.create_study(study_name=name, storage=postgres)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name=name, storage=postgres).trials) == 2
    assert len(optuna.load_study(study_name=name, storage=connect(postgres)).trials) == 2
    assert name in _dashboard_studies(postgres)


def test_sqlite_urls_name_their_file() -> None:
    assert sqlite_path("sqlite:///studies/demo.db") == Path("studies/demo.db")
    assert sqlite_path("postgresql://u@h:5432/db") is None


def test_the_fingerprint_check_names_what_changed() -> None:
    study = optuna.create_study()
    recorded = {"checkpoints": [{"name": "a", "bytes": 10}], "base": None}
    check_fingerprint(study, recorded, "cfg.yaml", "nothing")  # none recorded: passes
    with pytest.raises(UserError, match="a study that recorded none"):
        check_fingerprint(study, recorded, "cfg.yaml", "a study that recorded none", required=True)
    study.set_user_attr("fingerprint", recorded)
    check_fingerprint(study, json.loads(json.dumps(recorded)), "cfg.yaml", "same files")
    changed = {"checkpoints": [{"name": "a", "bytes": 11}], "base": None}
    with pytest.raises(UserError, match=r"^cfg\.yaml: checkpoints: .*checkpoints\[a\]\.bytes"):
        check_fingerprint(study, changed, "cfg.yaml", "use a new study name")


def test_a_fingerprint_recorded_before_content_digests_is_compared_on_what_it_kept(tiny_zoo):
    from search.engine.pool import CheckpointPool

    now = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base).identity.fingerprint()
    old = json.loads(json.dumps(now))
    for entry in (*old["checkpoints"], old["base"]):
        del entry["content_xxh3_128"]  # what studies recorded before whole-content digests
    study = optuna.create_study()
    study.set_user_attr("fingerprint", old)
    check_fingerprint(study, now, "c.yml", "x", required=True)
    old["checkpoints"][1]["data_sample_sha256"] = "0" * 64
    study.set_user_attr("fingerprint", old)
    with pytest.raises(UserError, match=r"checkpoints\[ft_b\]\.data_sample_sha256"):
        check_fingerprint(study, now, "c.yml", "x", required=True)
    # a study with content digests is compared on them
    study.set_user_attr("fingerprint", {**now, "base": {**now["base"], "content_xxh3_128": "0"}})
    with pytest.raises(UserError, match=r"base\.content_xxh3_128"):
        check_fingerprint(study, now, "c.yml", "x", required=True)


@pytest.mark.postgres
def test_a_workers_postgresql_sessions_close_after_the_grace_periods_silence(postgres: str) -> None:
    """Both ends of a worker's connection give up on a silent peer after the grace period (the
    server's settings reach it through libpq's ``options``); what the URL sets stays."""
    workers = WorkersConfig(heartbeat_s=1, grace_s=7)
    storage = connect(postgres, workers)
    with storage.engine.connect() as conn:
        shown = {
            name: conn.execute(sqlalchemy.text(f"SHOW {name}")).scalar()
            for name in ("tcp_keepalives_idle", "tcp_user_timeout")
        }
        raw = conn.connection.dbapi_connection
        assert raw is not None
        params = raw.info.get_parameters()
    assert shown == {"tcp_keepalives_idle": "7", "tcp_user_timeout": "7000"}
    assert params["keepalives_idle"] == "7" and params["tcp_user_timeout"] == "7000"
    mine = f"{postgres}?options=-c%20application_name%3Dmine&keepalives_idle=30"
    with connect(mine, workers).engine.connect() as conn:
        name = conn.execute(sqlalchemy.text("SHOW application_name")).scalar()
        user_timeout = conn.execute(sqlalchemy.text("SHOW tcp_user_timeout")).scalar()
        params = conn.connection.dbapi_connection.info.get_parameters()
    assert (name, user_timeout, params["keepalives_idle"]) == ("mine", "7000", "30")
    reader = connect(postgres)  # the dashboard's: no worker, nothing set
    with reader.engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SHOW tcp_user_timeout")).scalar() == "0"


def test_optunas_multi_line_storage_warning_keeps_its_first_line(tmp_path: Path) -> None:
    """Optuna warns about a failed query (a PostgreSQL restart) quoting its SQL over many lines;
    once a storage is open, that warning is one line."""
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    logger = logging.getLogger("optuna.storages._rdb.storage")
    handler = Keep()
    logger.addHandler(handler)
    try:
        connect(f"sqlite:///{tmp_path / 's.db'}", create=True)
        sql = "SELECT trials.trial_id\nFROM trials\nWHERE trials.study_id = %(study_id)s"
        logger.warning(
            "Caught an error from sqlalchemy: %s. Falling back.", f"(psycopg) gone\n{sql}"
        )
    finally:
        logger.removeHandler(handler)
    assert seen == ["Caught an error from sqlalchemy: (psycopg) gone"]
