"""A short soak (tests/search/faults/soak.py; bench/soak.py runs the long one): an 80-trial study,
2 workers on a throwaway PostgreSQL, one fault of each kind a second or two apart (SIGKILL the
launcher and launch again, SIGSTOP a worker mid-trial past the grace period, fill the study's
filesystem while an export is tried into it, restart PostgreSQL, SIGKILL a worker mid-trial); at
the end the checker holds and nothing printed a traceback."""

from __future__ import annotations

import os

import pytest

from tests.search.faults.soak import KINDS, FaultPlan, SoakSettings, run_soak, why_no_tmpfs
from tests.search.pg_server import throwaway_server
from tests.search.study_fixtures import build_pool_and_tasks


def test_a_study_under_one_fault_of_each_kind_ends_as_it_must(tiny_zoo, tmp_path):
    why = why_no_tmpfs(tmp_path / "probe")
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs tmpfs mounts for the soak: {why}")
        pytest.skip(why)
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    settings = SoakSettings(n_trials=80, workers=2, limit=6, grace_s=3, disk="8m")
    # the launcher first (its resume takes longest), then the rest a second or two apart, a
    # pause and a full disk lasting on meanwhile: every kind lands before the budget is spent
    # (80 trials: some seconds' margin at the ~5 trials a second of an idle 2-core machine)
    kinds = ("kill_launcher", "stop_worker", "fill_disk", "restart_postgres", "kill_worker")
    plan = FaultPlan(
        seed=1,
        interval_s=(1.0, 2.0),
        max_faults=len(kinds),
        kinds=kinds,
        shuffle=False,
        overlap=True,
        fill_s=3.0,
    )
    with throwaway_server() as server:
        report = run_soak(tmp_path, paths, server, "short", settings, plan, score_export=False)
    log = "\n".join(f"{e.at_s:7.1f} {e.kind}: {e.detail}" for e in report.events)
    assert report.faults == dict.fromkeys(KINDS, 1), log
    assert report.violations == [], log
    assert report.tracebacks == 0
    # a worker killed or stopped mid-trial, the launcher killed: their trials were retried
    assert report.retries.retries >= 1 and report.retries.failed_for_cause == 0
    assert report.exits[-1] == 0 and -9 in report.exits  # the killed launcher, then the resume
    # the export tried while the filesystem was full refused in one line, leaving no folder
    assert report.full_exports == [(2, 1, False)], log
