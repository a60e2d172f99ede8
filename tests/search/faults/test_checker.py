"""The soak's checker (tests/search/faults/checker.py): a real study, run by ``merge-search launch``
on SQLite, passes it; a copy of its storage corrupted one way at a time (a trial left RUNNING, a
value changed, a retry duplicated, a retry missing, per-example values that do not decode or do
not average to the score, a trial without its worker) is caught, each with its own line."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from tests.search.faults.checker import check_study
from tests.search.study_fixtures import (
    build_pool_and_tasks,
    launch_in_group,
    study_config,
    write_config,
)

N_TRIALS = 6
State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def finished_study(tiny_zoo, tmp_path_factory) -> Path:
    """The SQLite file of a 6-trial study launched with 2 workers, run to its budget."""
    root = tmp_path_factory.mktemp("checked")
    paths = build_pool_and_tasks(root, tiny_zoo)
    db = root / "checked.db"
    data = study_config(paths, "checked", f"sqlite:///{db}", budget={"n_trials": N_TRIALS})
    config = write_config(root / "checked.yaml", data)
    launcher = launch_in_group(config, "--workers", "2", cwd=root)
    _, err = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, err
    return db


def corrupted(db: Path, tmp_path: Path, change: Callable[[sqlite3.Connection], None]) -> str:
    """A copy of the study's file with ``change`` applied in SQL; its storage URL."""
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    with sqlite3.connect(copy) as conn:
        change(conn)
    return f"sqlite:///{copy}"


def complete_trials(ts: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in ts if t.state == State.COMPLETE]


def complete_ids(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """``[(trial_id, number)]`` of the COMPLETE trials, by number."""
    rows = conn.execute("SELECT trial_id, number FROM trials WHERE state = 'COMPLETE'")
    return sorted(rows, key=lambda r: r[1])


def test_a_finished_study_holds(finished_study):
    assert check_study(f"sqlite:///{finished_study}", "checked", N_TRIALS) == []


def test_the_wrong_budget_is_found(finished_study):
    found = check_study(f"sqlite:///{finished_study}", "checked", N_TRIALS + 1)
    assert found == [f"budget: {N_TRIALS} trials finished ({N_TRIALS} COMPLETE), expected 7"]


def test_a_trial_left_running_is_found(finished_study, tmp_path):
    def running(conn):
        trial_id, _ = complete_ids(conn)[0]
        conn.execute("UPDATE trials SET state = 'RUNNING' WHERE trial_id = ?", (trial_id,))

    found = check_study(corrupted(finished_study, tmp_path, running), "checked", N_TRIALS)
    assert any(line.endswith("left RUNNING") for line in found), found


def test_a_changed_value_is_found(finished_study, tmp_path):
    def change(conn):
        trial_id, _ = complete_ids(conn)[1]
        conn.execute(
            "UPDATE trial_values SET value = value + 0.25 WHERE trial_id = ? AND objective = 0",
            (trial_id,),
        )

    found = check_study(corrupted(finished_study, tmp_path, change), "checked", N_TRIALS)
    assert any("objective 'pick' =" in line for line in found), found


def _examples(conn: sqlite3.Connection, trial_id: int) -> dict:
    row = conn.execute(
        "SELECT value_json FROM trial_user_attributes WHERE trial_id = ? AND key = 'examples'",
        (trial_id,),
    ).fetchone()
    return json.loads(row[0])


def _set_examples(conn: sqlite3.Connection, trial_id: int, examples: dict) -> None:
    conn.execute(
        "UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND key = 'examples'",
        (json.dumps(examples), trial_id),
    )


def test_per_example_values_that_do_not_average_to_the_score_are_found(finished_study, tmp_path):
    def flip(conn):
        trial_id, _ = complete_ids(conn)[2]
        examples = _examples(conn, trial_id)
        packed = examples["c1_pick/acc"]
        raw = bytearray(base64.b64decode(packed["bits"]))
        raw[0] ^= 1  # example 0 now scored the other way
        packed["bits"] = base64.b64encode(bytes(raw)).decode("ascii")
        _set_examples(conn, trial_id, examples)

    found = check_study(corrupted(finished_study, tmp_path, flip), "checked", N_TRIALS)
    assert any("c1_pick/acc =" in line and "examples average" in line for line in found), found


def test_per_example_values_that_do_not_decode_are_found(finished_study, tmp_path):
    def garble(conn):
        trial_id, _ = complete_ids(conn)[3]
        examples = _examples(conn, trial_id)
        examples["text.txt/perplexity"]["f32"] = "AAA"  # not base64 of whole float32s
        _set_examples(conn, trial_id, examples)

    found = check_study(corrupted(finished_study, tmp_path, garble), "checked", N_TRIALS)
    assert any("text.txt/perplexity do not decode" in line for line in found), found


def test_a_trial_without_its_worker_is_found(finished_study, tmp_path):
    def anonymous(conn):
        trial_id, _ = complete_ids(conn)[0]
        conn.execute(
            "DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = 'worker'", (trial_id,)
        )

    found = check_study(corrupted(finished_study, tmp_path, anonymous), "checked", N_TRIALS)
    assert any("COMPLETE without a worker tag" in line for line in found), found


def retried(db: Path, tmp_path: Path, copies: int, told_after: bool = False) -> str:
    """A copy of the study in which one COMPLETE trial became a FAIL retried ``copies`` times
    (each retry COMPLETE with its scores, as Optuna's ``RetryFailedTrialCallback`` records a
    retry); ``told_after``: the FAIL trial keeps its values (told after it failed)."""

    original = optuna.load_study(study_name="checked", storage=f"sqlite:///{db}")
    source = min(complete_trials(original.get_trials()), key=lambda t: t.number)

    def fail(conn):
        conn.execute("UPDATE trials SET state = 'FAIL' WHERE number = ?", (source.number,))
        if not told_after:
            conn.execute(
                "DELETE FROM trial_values WHERE trial_id = "
                "(SELECT trial_id FROM trials WHERE number = ?)",
                (source.number,),
            )

    url = corrupted(db, tmp_path, fail)
    study = optuna.load_study(study_name="checked", storage=url)
    for _ in range(copies):
        add_retry(study, source)
    return url


def add_retry(study: optuna.Study, source: optuna.trial.FrozenTrial) -> None:
    """A COMPLETE trial with ``source``'s scores recorded as its retry, as Optuna's
    ``RetryFailedTrialCallback`` records one."""
    study.add_trial(
        optuna.trial.create_trial(
            state=State.COMPLETE,
            values=source.values,
            params=source.params,
            distributions=source.distributions,
            user_attrs=source.user_attrs,
            system_attrs={"failed_trial": source.number, "retry_history": [source.number]},
        )
    )


def test_a_trial_retried_once_holds(finished_study, tmp_path):
    assert check_study(retried(finished_study, tmp_path, copies=1), "checked", N_TRIALS) == []


def test_a_duplicated_retry_is_found(finished_study, tmp_path):
    found = check_study(retried(finished_study, tmp_path, copies=2), "checked", N_TRIALS)
    assert any("FAIL with 2 retries recorded" in line for line in found), found
    assert any("finished 2 times in its retry chain" in line for line in found), found
    assert any(line.startswith("budget: 7 trials finished") for line in found), found


def test_a_missing_retry_is_found(finished_study, tmp_path):
    found = check_study(retried(finished_study, tmp_path, copies=0), "checked", N_TRIALS)
    assert any("FAIL with 0 retries recorded" in line for line in found), found


def test_a_trial_told_after_it_failed_is_found(finished_study, tmp_path):
    url = retried(finished_study, tmp_path, copies=1, told_after=True)
    found = check_study(url, "checked", N_TRIALS)
    assert any("FAIL but holds values" in line for line in found), found


def test_a_retry_of_a_trial_that_did_not_fail_is_found(finished_study, tmp_path):
    url = corrupted(finished_study, tmp_path, lambda conn: None)
    study = optuna.load_study(study_name="checked", storage=url)
    add_retry(study, study.get_trials()[0])
    found = check_study(url, "checked", N_TRIALS)
    assert any("which is COMPLETE, not FAIL" in line for line in found), found
    assert any("finished 2 times in its retry chain" in line for line in found), found
