"""A refused launch prints its one line and nothing after it.

Before: on a bad input found by the workers (an unknown metric), the launcher stopped the other
workers with SIGTERM while they were already exiting; the stop interrupted the interpreter's exit
and printed a ``SystemExit: 143`` traceback from an atexit finalizer, or left multiprocessing
semaphores registered ("resource_tracker: There appear to be N leaked semaphore objects").
"""

from __future__ import annotations

from tests.search.study_fixtures import build_pool_and_tasks, cli, study_config, write_config


def test_a_refused_launch_prints_one_line_and_nothing_after(tiny_zoo, tmp_path):
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    data = study_config(paths, "refused", f"sqlite:///{tmp_path / 'refused.db'}")
    data["objectives"][0]["tasks"][0]["metric"] = "accc"
    config = write_config(tmp_path / "refused.yaml", data)
    proc = cli("launch", str(config), "--workers", "2", cwd=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("merge-search: error: ") and "'accc'" in lines[-1]
    for noise in ("Traceback", "resource_tracker", "leaked", "Exception ignored"):
        assert noise not in err, err
