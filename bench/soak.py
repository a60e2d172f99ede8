"""A study under mixed faults: does everything that must hold at the end hold, and at what cost?

Builds the tests' tiny pool and tasks (``tests/search/conftest.py``,
``tests/search/study_fixtures.py``), starts a throwaway PostgreSQL server
(``tests/search/pg_server.py``) and runs ``merge-search launch CONFIG --workers N`` of a
``--trials`` study on it, launched again whenever it exits early, while a seeded injector applies
``--faults`` faults, one every ``--interval`` seconds, in rounds of the five kinds (SIGKILL a
worker; SIGSTOP a worker for 3x the grace period; restart PostgreSQL; fill the study's tmpfs for
10 s while an export is tried into it; SIGKILL the launcher and launch again). The machinery is
``tests/search/faults/soak.py``; every action is logged with its time to
``<root>/soak-logs/faults.jsonl``.

At the end: the checker (``tests/search/faults/checker.py``), ``merge-search export --knee`` and
``merge-search eval`` (lm-eval) of the export against the scores the study recorded for that
trial. Then the same study without faults (``--clean``) for the wall-time overhead. Prints the
faults applied by kind, the trials retried, the checker's result and the ratio; writes it all as
JSON to ``<root>/soak.json``. Needs root (tmpfs mounts) and PostgreSQL's server binaries.

    python bench/soak.py --trials 2400 --workers 4 --faults 50 --interval 15 18 --limit 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' fixtures are imported as tests.<path>

from tests.search.conftest import _build  # noqa: E402
from tests.search.faults.soak import (  # noqa: E402
    FaultPlan,
    SoakReport,
    SoakSettings,
    run_soak,
)
from tests.search.pg_server import throwaway_server  # noqa: E402
from tests.search.study_fixtures import build_pool_and_tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--faults", type=int, default=45, help="at most this many faults")
    parser.add_argument("--interval", type=float, nargs=2, default=(15.0, 30.0), metavar="S")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=6, help="examples per task and trial")
    parser.add_argument("--grace", type=int, default=4, help="workers.grace_s (heartbeat 1 s)")
    parser.add_argument("--no-clean", action="store_true", help="skip the run without faults")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temp)")
    args = parser.parse_args()
    # stopped from a shell (nohup ... &, where SIGINT is ignored): unwind, so the launch, the
    # PostgreSQL server and the tmpfs are cleaned up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.trials < 1 or args.workers < 1 or args.faults < 0 or not 0 < args.interval[0]:
        parser.error("--trials, --workers >= 1; --faults >= 0; --interval > 0")
    root = args.root or Path(tempfile.mkdtemp(prefix="soak-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"work folder {root}", flush=True)
    zoo = _build(root / "zoo", tied=False)
    paths = build_pool_and_tasks(root, zoo)
    settings = SoakSettings(
        n_trials=args.trials, workers=args.workers, limit=args.limit, grace_s=args.grace
    )
    plan = FaultPlan(seed=args.seed, interval_s=tuple(args.interval), max_faults=args.faults)
    reports: dict[str, SoakReport] = {}
    with throwaway_server() as server:
        reports["faulty"] = run_soak(root, paths, server, "soak", settings, plan)
        show(reports["faulty"])
        if not args.no_clean:
            reports["clean"] = run_soak(root, paths, server, "clean", settings, None)
            show(reports["clean"])
    (root / "soak.json").write_text(
        json.dumps({k: dataclasses.asdict(v) for k, v in reports.items()}, indent=2)
    )
    faulty = reports["faulty"]
    ratio = ""
    if "clean" in reports:
        ratio = f"; wall time faulty/clean {faulty.wall_s / reports['clean'].wall_s:.2f}"
    held = "holds" if not faulty.violations else f"{len(faulty.violations)} violations"
    print(
        f"soak: {args.trials} trials, {args.workers} workers, {sum(faulty.faults.values())} faults "
        f"({', '.join(f'{k} {v}' for k, v in sorted(faulty.faults.items()))}), "
        f"{faulty.retries.retries} retries of {faulty.retries.failed} failed trials, "
        f"{faulty.launches} launches, checker {held}{ratio}"
    )
    sys.exit(0 if not faulty.violations and faulty.export.get("max_abs_diff", 1) < 1e-6 else 1)


def show(r: SoakReport) -> None:
    """One block per run: wall time, launches, faults, retries, checker, export."""
    print(f"== {r.name}: {r.wall_s:.0f} s, {r.launches} launches (exit codes {r.exits})")
    if r.faults:
        print(f"   faults applied: {sum(r.faults.values())} {dict(sorted(r.faults.items()))}")
    print(
        f"   FAIL trials {r.retries.failed} (failed for cause {r.retries.failed_for_cause}), "
        f"retries {r.retries.retries}, results dropped by woken workers {r.dropped}, "
        f"tracebacks printed {r.tracebacks}"
    )
    if r.outlived_s:
        o = sorted(r.outlived_s)
        print(
            f"   a killed launcher's workers were gone after median {o[len(o) // 2]:.1f} s, "
            f"max {o[-1]:.1f} s ({len(o)} kills)"
        )
    print(f"   checker: {'holds' if not r.violations else 'VIOLATED'}")
    for line in r.violations:
        print(f"     {line}")
    fills = [e.detail for e in r.events if e.kind == "fill_disk" and "export" in e.detail]
    for line in fills[:3]:
        print(f"   while the disk was full: {line}")
    if r.export:
        print(f"   export --knee + lm-eval: {r.export}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
