"""How long Ctrl-C takes to stop a launch, and what it leaves.

Builds the tests' tiny pool and tasks (``tests/search/conftest.py``,
``tests/search/study_fixtures.py``), then, ``--tries`` times: ``merge-search launch CONFIG
--workers N`` in a process group of its own, waits until two more trials completed, sends
SIGINT to the whole group (what a terminal's Ctrl-C does) and measures the seconds until the
last process of the group is gone. Each try resumes the same study. Prints one row per try and
the summary (median, max, mean ± SE), with how many tries left a trial RUNNING, exited with
another code than 130 or printed a traceback.

    python bench/stops.py --tries 20 --workers 2
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' fixtures are imported as tests.<path>

import optuna  # noqa: E402

from tests.search.conftest import _build  # noqa: E402
from tests.search.study_fixtures import (  # noqa: E402
    build_pool_and_tasks,
    complete,
    group_members,
    launch_in_group,
    study_config,
    trials,
    wait_for,
    write_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stops-"))
    zoo = _build(root / "zoo", tied=False)
    paths = build_pool_and_tasks(root, zoo)
    storage = f"sqlite:///{root / 'studies' / 'stops.db'}"
    config = write_config(
        root / "stops.yaml", study_config(paths, "stops", storage, budget={"n_trials": 5000})
    )
    seconds, bad = [], []
    for attempt in range(args.tries):
        before = len(complete(trials("stops", storage)))
        proc = launch_in_group(config, "--workers", str(args.workers), cwd=root)
        wait_for(
            lambda before=before: len(complete(trials("stops", storage))) >= before + 2,
            "two more trials",
            proc,
        )
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        while group_members(proc.pid) or proc.poll() is None:
            time.sleep(0.05)
        took = time.monotonic() - sent
        err = proc.stderr.read() if proc.stderr else ""
        left = [t for t in trials("stops", storage) if t.state == optuna.trial.TrialState.RUNNING]
        trouble = []
        if proc.returncode != 130:
            trouble.append(f"exit {proc.returncode}")
        if left:
            trouble.append(f"{len(left)} RUNNING")
        if "Traceback" in err or "leaked" in err:
            trouble.append("traceback/warning printed")
        seconds.append(took)
        print(f"try {attempt + 1:2d}: stopped in {took:5.2f} s {'; '.join(trouble) or 'clean'}")
        if trouble:
            bad.append(attempt)
            (root / f"stderr-{attempt + 1}.txt").write_text(err)
    n = len(seconds)
    se = statistics.stdev(seconds) / n**0.5 if n > 1 else float("nan")
    print(
        f"{n} tries, {args.workers} workers: stop median {statistics.median(seconds):.2f} s, "
        f"max {max(seconds):.2f} s, mean {statistics.fmean(seconds):.2f} ± {se:.2f} s (SE); "
        f"{n - len(bad)}/{n} clean (exit 130, no trial RUNNING, nothing printed after)"
    )
    if bad:
        print(f"stderr of the others under {root}")


if __name__ == "__main__":
    main()
