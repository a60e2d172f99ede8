"""`merge-search dashboard`: optuna-dashboard on the study's storage."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main
from tests.search.report_fixtures import free_port


@contextlib.contextmanager
def dashboard(target: str):
    """``merge-search dashboard TARGET`` in a subprocess; yields ``(get, port, output)``:
    ``get(path)`` answers the JSON of ``/api/...``; ``output`` holds the process's console
    once it has stopped."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "dashboard", target, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def get(path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
            return json.load(resp)

    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                get("/api/meta")
                break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError(f"dashboard did not answer (exit code {proc.poll()})")
        yield get, port, output
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        output.append(out)


@pytest.mark.parametrize("by", ["config", "url"])
def test_dashboard_serves_the_study_on_localhost(exportable, by):
    config, study = exportable
    target = str(config) if by == "config" else f"sqlite:///{config.parent / 'studies.db'}"
    with dashboard(target) as (get, port, output):
        answer = get("/api/studies")
        assert [s["study_name"] for s in answer["study_summaries"]] == ["exportable"]
    assert f"http://127.0.0.1:{port}/dashboard/" in output[0]


def test_the_dashboard_notes_say_what_each_objective_and_trial_is(launched):
    from search.study.record import TrialRecord

    assert main(["pareto", str(launched)]) == 0  # the knee's test verdict goes into the note
    with dashboard(str(launched)) as (get, _, _):
        (summary,) = get("/api/studies")["study_summaries"]
        detail = get(f"/api/studies/{summary['study_id']}")
    note = detail["note"]["body"]
    assert "name: pick" in note and "task: c2_pick" in note and "metric: acc" in note
    assert "name: ppl" in note and "direction: minimize" in note and "text.txt" in note
    assert "## Test split: trial" in note and "(the knee) vs the uniform merge" in note
    assert "| uniform |" in note and "| chosen: trial" in note  # the verdict table
    study = optuna.load_study(
        study_name="launched", storage=f"sqlite:///{launched.parent / 'studies.db'}"
    )
    records = {t.number: TrialRecord.from_trial(t) for t in study.trials}
    assert len(detail["trials"]) == len(records) >= 5
    for trial in detail["trials"]:
        body = trial["note"]["body"]
        record = records[trial["number"]]
        assert f"plan key `{record.plan_key}`" in body
        doc = yaml.safe_load(body.split("```yaml\n")[1].split("```")[0])
        assert doc["merge_method"] == "linear"
        assert len(doc["models"]) == 3 and all(Path(m["model"]).is_dir() for m in doc["models"])
        weights = [m["parameters"]["weight"] for m in doc["models"]]
        assert weights == pytest.approx([w[0] for w in record.plan["weights"]])


def test_dashboard_refuses_a_missing_storage_and_a_busy_port(exportable, tmp_path, capsys):
    config, _ = exportable
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    assert main(["dashboard", missing]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", str(config), "--port", str(port)]) == 2
    assert f"--port {port}: already in use" in capsys.readouterr().err
