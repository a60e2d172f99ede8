"""No secret at rest or on the wire: a password in the storage URL never reaches the study.

On the shared PostgreSQL at 127.0.0.1:5432 (trust authentication: any password is accepted, so
a URL with one connects as the role alone): a real ``merge-search launch`` with a password in
its URL, then every row of every table of the database and optuna-dashboard's study API are
searched for it. With ``CI`` set the test fails instead of skipping when the server is away.
"""

from __future__ import annotations

import json
import uuid

import optuna
import pytest
import sqlalchemy

from search.cli import main
from tests.search.report_fixtures import dashboard_get
from tests.search.study_fixtures import build_pool_and_tasks, study_config, write_config


@pytest.mark.postgres
def test_a_password_in_the_url_reaches_no_row_no_line_and_no_dashboard_answer(
    postgres, tiny_zoo, tmp_path, capfd
):
    secret = f"pw-{uuid.uuid4().hex}"
    user, host = postgres.removeprefix("postgresql://").split("@", 1)
    with_password = f"postgresql://{user}:{secret}@{host}"
    name = f"secrets-{uuid.uuid4().hex[:8]}"
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    data = study_config(paths, name, with_password, budget={"n_trials": 2}, seed_trials=["uniform"])
    config = write_config(tmp_path / "secret.yaml", data)
    try:
        assert main(["launch", str(config), "--workers", "1"]) == 0
        printed = capfd.readouterr()
        assert secret not in printed.out + printed.err
        assert f"{user}:***@{host}" in printed.err  # the launch names the storage, redacted
        study = optuna.load_study(study_name=name, storage=postgres)
        assert len(study.trials) == 2
        assert study.user_attrs["config"]["storage"] == f"postgresql://{user}:***@{host}"
        engine = sqlalchemy.create_engine(postgres)
        try:
            with engine.connect() as conn:
                tables = sqlalchemy.inspect(conn).get_table_names()
                assert "study_user_attributes" in tables
                for table in tables:
                    rows = conn.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')).fetchall()
                    assert secret not in repr(rows), f"the password is stored in table {table}"
        finally:
            engine.dispose()
        body = dashboard_get(postgres, f"/api/studies/{study._study_id}?after=0")
        assert json.loads(body)["name"] == name and "***" in body
        assert secret not in body
    finally:
        optuna.delete_study(study_name=name, storage=postgres)
