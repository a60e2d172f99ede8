"""`merge-search dashboard`: optuna-dashboard on the study's storage."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from search.cli import main
from tests.search.report_fixtures import free_port


@pytest.mark.parametrize("by", ["config", "url"])
def test_dashboard_serves_the_study_on_localhost(exportable, by):
    config, study = exportable
    target = str(config) if by == "config" else f"sqlite:///{config.parent / 'studies.db'}"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "dashboard", target, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        answer = None
        deadline = time.monotonic() + 60
        while answer is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/studies", timeout=5
                ) as resp:
                    answer = json.load(resp)
            except OSError:
                time.sleep(0.3)
        assert answer is not None, f"dashboard did not answer (exit code {proc.poll()})"
        assert [s["study_name"] for s in answer["study_summaries"]] == ["exportable"]
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"http://127.0.0.1:{port}/dashboard/" in out


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
