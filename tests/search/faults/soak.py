"""A soak: a launched study driven to its budget while a seeded injector applies mixed faults.

Used by ``tests/search/faults/test_soak.py`` (a short run) and ``bench/soak.py`` (hundreds of
trials). What runs, as a user would run it:

- a throwaway PostgreSQL server of the soak's own (``tests/search/pg_server.py``) holds the study;
- the study's folder (config, exports, the launches' ``TMPDIR``) is a small tmpfs mounted for the
  soak, so filling it fills a real filesystem;
- ``merge-search launch CONFIG --workers N`` runs in a session of its own; whenever it exits before
  the budget is spent (all its workers killed, or the launcher itself killed), it is launched
  again (a resume), as the summary line tells a user to do;
- :class:`Injector`, a thread, applies one fault every ``interval_s`` (seeded, bounded in count,
  each round of kinds a seeded permutation, so every kind comes up), logging each action with
  its time (``overlap``: a pause or a full disk lasts on while the next faults come):

  - ``kill_worker``: SIGKILL one worker of the running launch;
  - ``stop_worker``: SIGSTOP one worker for ``stop_factor`` x the grace period, then SIGCONT;
  - ``restart_postgres``: ``pg_ctl restart -m fast`` of the study's server;
  - ``fill_disk``: fill the study's filesystem with one file for ``fill_s`` seconds, run
    ``merge-search export --knee`` into it meanwhile (it must refuse in one line and leave no
    folder), then free it;
  - ``kill_launcher``: SIGKILL the launcher alone; its workers stop with it
    (``search.study.processes.die_with_parent``) and the study is launched again.

At the end :func:`tests.search.faults.checker.check_study` judges the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tests.search.pg_server import Server

REPO = Path(__file__).resolve().parents[3]
KINDS = ("kill_worker", "stop_worker", "restart_postgres", "fill_disk", "kill_launcher")


@dataclass(frozen=True)
class FaultPlan:
    """What the injector may do: ``max_faults`` faults in all, one every ``interval_s``
    (uniform between the two bounds, seeded), of ``kinds``."""

    seed: int = 0
    interval_s: tuple[float, float] = (15.0, 30.0)
    max_faults: int = 40
    kinds: tuple[str, ...] = KINDS
    stop_factor: float = 3.0  # a stopped worker sleeps this many grace periods
    fill_s: float = 10.0  # the filesystem stays full at least this long
    first_after_s: float | None = None  # the first fault (default: one interval after the start)
    shuffle: bool = True  # each round of kinds a seeded permutation (else in ``kinds``' order)
    overlap: bool = False  # a pause or a full disk lasts on while the next faults come


@dataclass(frozen=True)
class Event:
    """One logged action: seconds since the soak began, UTC time, kind, what happened."""

    at_s: float
    utc: str
    kind: str
    detail: str
    applied: bool = True


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``"64m"``) mounted at ``path`` (root only), unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def why_no_tmpfs(probe: Path) -> str | None:
    """Why a tmpfs cannot be mounted here (not root, no ``mount`` permission), or ``None``."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    try:
        with tmpfs(probe, "1m"):
            pass
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot mount a tmpfs: {getattr(exc, 'stderr', '') or exc}".strip()
    return None


def worker_pids(launcher: int) -> list[int]:
    """The live worker processes of a launcher (its ``spawn`` children, not the resource
    tracker), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == launcher and "spawn_main" in cmdline:
            out.append(int(entry.name))
    return sorted(out)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cli_env(tmp: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return env


@dataclass
class Launches:
    """``merge-search launch CONFIG --workers N``, launched again whenever it exits early.

    Each launch writes its output to ``logs/launch-K.out`` / ``.err``; ``exits`` records each
    exit code (a negative code: killed by that signal).
    """

    config: Path
    workers: int
    logs: Path
    cwd: Path
    tmp: Path | None = None
    exits: list[int] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> subprocess.Popen:
        with self._lock:
            k = len(self.exits) + 1
            out = (self.logs / f"launch-{k}.out").open("w")
            err = (self.logs / f"launch-{k}.err").open("w")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "search.cli", "launch", str(self.config)]
                + ["--workers", str(self.workers)],
                cwd=self.cwd,
                env=cli_env(self.tmp),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            out.close()
            err.close()
            return self.proc

    def running(self) -> subprocess.Popen | None:
        with self._lock:
            return self.proc if self.proc is not None and self.proc.poll() is None else None

    def reap(self) -> int | None:
        """The exit code of the launch that just ended (recorded), else ``None``."""
        with self._lock:
            if self.proc is None or self.proc.poll() is None:
                return None
            code = self.proc.returncode
            self.exits.append(code)
            self.proc = None
            return code

    def stderr_texts(self) -> list[str]:
        return [p.read_text() for p in sorted(self.logs.glob("launch-*.err"))]


class Injector(threading.Thread):
    """Applies :class:`FaultPlan`'s faults to a running soak until ``done`` is set.

    Args:
        plan: the faults' seed, pacing, count and kinds.
        launches: the launches whose workers and launcher it hits.
        server: the study's PostgreSQL (restarted by ``restart_postgres``).
        study: the study's name (faults are applied only while its trials run).
        disk: the study's filesystem (filled by ``fill_disk``).
        grace_s: the study's grace period (``stop_worker`` sleeps ``stop_factor`` of them).
        export: the ``merge-search export`` arguments tried while the disk is full.
        log: a file every event is appended to (one JSON line each), besides ``events``.
    """

    def __init__(
        self,
        plan: FaultPlan,
        launches: Launches,
        server: Server,
        study: str,
        disk: Path,
        grace_s: float,
        export: list[str],
        log: Path,
    ) -> None:
        super().__init__(name="fault-injector", daemon=True)
        self.plan, self.launches, self.server = plan, launches, server
        self.study, self.storage = study, server.url
        self.disk, self.grace_s, self.export, self.log = disk, grace_s, export, log
        self.rng = random.Random(plan.seed)
        self.done = threading.Event()
        self.events: list[Event] = []
        self.full_exports: list[tuple[int, int, bool]] = []  # exit code, stderr lines, folder left
        self.outlived_s: list[float] = []  # how long a killed launcher's workers lived on
        self.started = time.monotonic()
        self._round: list[str] = []
        self._holds: list[threading.Thread] = []  # pauses and full disks lasting on (overlap)

    # ------------------------------------------------------------------------------ the loop

    def run(self) -> None:
        first = self.plan.first_after_s
        wait = first if first is not None else self.rng.uniform(*self.plan.interval_s)
        applied = 0
        while applied < self.plan.max_faults and not self.done.wait(wait):
            kind = self.next_kind()
            try:
                ok = getattr(self, kind)()
            except Exception as exc:  # noqa: BLE001 - logged: a fault that could not be applied
                ok = False
                self.note(kind, f"could not apply: {type(exc).__name__}: {exc}", applied=False)
            if ok:
                applied += 1
                wait = self.rng.uniform(*self.plan.interval_s)
            else:
                self._round.insert(0, kind)  # try the same kind again soon
                wait = 1.0
        for hold in self._holds:
            hold.join()
        self.note("injector", f"stopped after {applied} faults", applied=False)

    def next_kind(self) -> str:
        if not self._round:
            self._round = list(self.plan.kinds)
            if self.plan.shuffle:
                self.rng.shuffle(self._round)
        return self._round.pop(0)

    def note(self, kind: str, detail: str, applied: bool = True) -> None:
        event = Event(
            round(time.monotonic() - self.started, 2),
            datetime.now(UTC).isoformat(timespec="seconds"),
            kind,
            detail,
            applied,
        )
        self.events.append(event)
        with self.log.open("a") as f:
            f.write(json.dumps(dataclasses.asdict(event)) + "\n")

    def applied(self) -> Counter[str]:
        return Counter(e.kind for e in self.events if e.applied and e.kind in KINDS)

    # ---------------------------------------------------------------------------- the faults

    def holders(self) -> dict[int, int]:
        """``{worker pid: trial number}`` of the running launch's workers that hold a RUNNING
        trial (read from the study: a fault is applied only while trials run)."""
        from search.study.record import TrialRecord

        proc = self.launches.running()
        if proc is None:
            return {}
        try:
            study = optuna.load_study(study_name=self.study, storage=self.storage)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except Exception:  # noqa: BLE001 - not created yet, or the server is restarting
            return {}
        ours = set(worker_pids(proc.pid))
        out = {}
        for t in running:
            tag = (TrialRecord.from_trial(t).worker or "").split(":")
            if len(tag) > 1 and tag[1].isdigit() and int(tag[1]) in ours:
                out[int(tag[1])] = t.number
        return out

    def _a_worker(self) -> tuple[int, int] | None:
        held = self.holders()
        return self.rng.choice(sorted(held.items())) if held else None

    def kill_worker(self) -> bool:
        chosen = self._a_worker()
        if chosen is None:
            return False
        pid, number = chosen
        os.kill(pid, signal.SIGKILL)
        self.note("kill_worker", f"SIGKILL worker {pid} (running trial {number})")
        return True

    def stop_worker(self) -> bool:
        chosen = self._a_worker()
        if chosen is None:
            return False
        pid, number = chosen
        hold = self.plan.stop_factor * self.grace_s
        os.kill(pid, signal.SIGSTOP)
        self.note("stop_worker", f"SIGSTOP worker {pid} (running trial {number}) for {hold:.0f} s")
        self._hold(self._wake, pid, hold)
        return True

    def _hold(self, then: Any, *args: Any) -> None:
        """Run ``then`` (the rest of a fault that lasts) now, or beside the next faults."""
        if not self.plan.overlap:
            then(*args)
            return
        thread = threading.Thread(target=then, args=args, name=f"fault-{then.__name__}")
        thread.start()
        self._holds.append(thread)

    def _wake(self, pid: int, hold: float) -> None:
        time.sleep(hold)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.note("stop_worker", f"SIGCONT worker {pid}", applied=False)

    def restart_postgres(self) -> bool:
        if not self.holders():
            return False
        start = time.monotonic()
        self.server.ctl("restart", "-m", "fast")
        self.note("restart_postgres", f"pg_ctl restart -m fast: {time.monotonic() - start:.1f} s")
        return True

    def fill_disk(self) -> bool:
        filler = self.disk / "filler"
        if filler.exists() or not self.holders():  # still full from the last time
            return False
        target = self.disk / f"export-during-fill-{len(self.events)}"
        with filler.open("wb") as f:
            free = os.statvfs(self.disk).f_bavail * os.statvfs(self.disk).f_frsize
            os.posix_fallocate(f.fileno(), 0, free)
        left = os.statvfs(self.disk).f_bavail
        start = time.monotonic()
        self.note("fill_disk", f"filled {self.disk} with {free:,} bytes ({left} blocks left)")
        self._hold(self._full, filler, target, start)
        return True

    def _full(self, filler: Path, target: Path, start: float) -> None:
        """While the disk is full: an export tried into it; then free it."""
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "search.cli", "export", *self.export, "--out", str(target)],
                cwd=REPO,
                env=cli_env(),
                capture_output=True,
                text=True,
                timeout=600,
            )
            lines = proc.stderr.strip().splitlines()
            self.full_exports.append((proc.returncode, len(lines), target.exists()))
            self.note(
                "fill_disk",
                f"export --knee while full: exit {proc.returncode}, {len(lines)} stderr lines, "
                f"last {lines[-1] if lines else ''!r}, folder left: {target.exists()}",
                applied=False,
            )
            time.sleep(max(0.0, self.plan.fill_s - (time.monotonic() - start)))
        finally:
            filler.unlink()
        self.note("fill_disk", f"freed after {time.monotonic() - start:.1f} s", applied=False)

    def kill_launcher(self) -> bool:
        proc = self.launches.running()
        held = self.holders()
        if proc is None or not held:
            return False
        workers = worker_pids(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        self.note(
            "kill_launcher",
            f"SIGKILL launcher {proc.pid} (its workers stop with it; running trials "
            f"{sorted(held.values())})",
        )
        threading.Thread(target=self._outlived, args=(proc.pid, workers), daemon=True).start()
        return True

    def _outlived(self, launcher: int, workers: list[int]) -> None:
        """Note how long a killed launcher's workers lived on (they stop with it)."""
        start = time.monotonic()
        while any(alive(pid) for pid in workers) and time.monotonic() - start < 600:
            time.sleep(0.2)
        gone = time.monotonic() - start
        self.outlived_s.append(gone)
        detail = f"workers of launcher {launcher} gone {gone:.1f} s after it"
        self.note("kill_launcher", detail, applied=False)


# ------------------------------------------------------------------------------------- driving


def finished_trials(name: str, storage: str) -> int:
    """Trials that count toward the budget (COMPLETE or PRUNED); 0 while unreachable."""
    try:
        ts = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - not created yet, or the server is restarting
        return 0
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.state in done for t in ts)


def drive(
    launches: Launches,
    name: str,
    storage: str,
    n_trials: int,
    injector: Injector | None = None,
    limit_s: float = 7200,
) -> float:
    """Launch, and launch again after each early exit, until a launch exits 0 with the budget
    spent; the injector (if any) runs meanwhile. Wall seconds from the first launch."""
    start = time.monotonic()
    launches.start()
    if injector is not None:
        injector.start()
    try:
        while True:
            if time.monotonic() - start > limit_s:
                raise TimeoutError(f"the soak did not finish within {limit_s:.0f} s")
            code = launches.reap()
            if code is None:
                time.sleep(0.5)
                continue
            if code == 0 and finished_trials(name, storage) >= n_trials:
                return time.monotonic() - start
            time.sleep(1.0)  # e.g. the server restarting: try again as a user would
            launches.start()
    finally:
        if injector is not None:
            injector.done.set()
            injector.join(timeout=600)
        proc = launches.running()
        if proc is not None:  # gave up: leave nothing behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass(frozen=True)
class Retries:
    """What the study recorded of failures: FAIL trials, retries (trials that repeat a failed
    one), failed for what they are (``TrialRecord.failed``)."""

    failed: int
    retries: int
    failed_for_cause: int


def retries_of(name: str, storage: str) -> Retries:
    from search.study.record import TrialRecord

    ts = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    fail = [t for t in ts if t.state == optuna.trial.TrialState.FAIL]
    return Retries(
        failed=len(fail),
        retries=sum(t.system_attrs.get("failed_trial") is not None for t in ts),
        failed_for_cause=sum(TrialRecord.from_trial(t).failed is not None for t in fail),
    )


def tracebacks(texts: list[str]) -> int:
    """How many tracebacks the launches printed."""
    return sum(text.count("Traceback (most recent call last)") for text in texts)


def export_and_score(
    config: Path, storage: str, name: str, out: Path, task: str, extra: list[str]
) -> dict[str, Any]:
    """``merge-search export CONFIG --knee``, then ``merge-search eval`` (lm-eval) of the export
    on ``task``; what the study recorded for that trial beside what the export scores."""
    from search.study.record import TrialRecord

    export = subprocess.run(
        [sys.executable, "-m", "search.cli", "export", str(config), "--knee", "--out", str(out)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if export.returncode != 0:
        return {"export_exit": export.returncode, "export_stderr": export.stderr[-2000:]}
    number = int(export.stdout.split("exported trial ", 1)[1].split()[0])
    scored = subprocess.run(
        [sys.executable, "-m", "search.cli", "eval", str(out), "--tasks", task, "--json", *extra],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if scored.returncode != 0:
        return {"trial": number, "eval_exit": scored.returncode, "eval_stderr": scored.stderr}
    measured = json.loads(scored.stdout)["scores"]
    study = optuna.load_study(study_name=name, storage=storage)
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    recorded = TrialRecord.from_trial(trial).task_scores
    keys = [k for k in measured if k in recorded]
    return {
        "trial": number,
        "export_line": export.stdout.strip().splitlines()[-1],
        "recorded": {k: recorded[k] for k in keys},
        "measured": {k: measured[k] for k in keys},
        "max_abs_diff": max((abs(recorded[k] - measured[k]) for k in keys), default=None),
    }


# ------------------------------------------------------------------------------------- a soak


@dataclass(frozen=True)
class SoakSettings:
    """The study a soak runs: its size, workers and scoring, its heartbeat and grace period."""

    n_trials: int = 300
    workers: int = 4
    limit: int = 6  # examples per task (the tiny choice task has 10)
    heartbeat_s: int = 1
    grace_s: int = 4
    max_retry: int = 3
    disk: str = "16m"  # the study folder's tmpfs


@dataclass
class SoakReport:
    """What one soak (or clean run) did and what held at the end."""

    name: str
    wall_s: float
    launches: int
    exits: list[int]
    faults: dict[str, int]
    retries: Retries
    violations: list[str]
    tracebacks: int
    dropped: int  # results a woken worker dropped (one line each)
    export: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    full_exports: list[tuple[int, int, bool]] = field(default_factory=list)
    outlived_s: list[float] = field(default_factory=list)  # a killed launcher's workers


def soak_config(paths: dict[str, Any], name: str, storage: str, s: SoakSettings) -> dict[str, Any]:
    """The tests' two-objective study (``study_fixtures.study_config``) at the soak's size."""
    from tests.search.study_fixtures import study_config

    data = study_config(paths, name, storage, budget={"n_trials": s.n_trials})
    data["eval"]["limit"] = s.limit
    data["workers"] = {
        "heartbeat_s": s.heartbeat_s,
        "grace_s": s.grace_s,
        "max_retry": s.max_retry,
        "threads": 1,
        "storage_retry_s": 120,
    }
    return data


def run_soak(
    root: Path,
    paths: dict[str, Any],
    server: Server,
    name: str,
    settings: SoakSettings,
    plan: FaultPlan | None,
    limit_s: float = 7200,
    score_export: bool = True,
) -> SoakReport:
    """One study run to its budget on ``server`` under ``plan``'s faults (``None``: no fault),
    its folder a tmpfs under ``root``; then the checker, and (with faults and ``score_export``)
    the knee's export scored by lm-eval against what the study recorded."""
    from tests.search.faults.checker import check_study
    from tests.search.study_fixtures import write_config

    logs = root / f"{name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tmpfs(root / f"{name}-disk", settings.disk) as disk:
        tmp = disk / "tmp"
        tmp.mkdir()
        config = write_config(disk / f"{name}.yaml", soak_config(paths, name, server.url, settings))
        launches = Launches(config, settings.workers, logs, cwd=root, tmp=tmp)
        injector = None
        if plan is not None:
            export = [str(config), "--knee"]
            injector = Injector(
                plan, launches, server, name, disk, settings.grace_s, export, logs / "faults.jsonl"
            )
        wall = drive(launches, name, server.url, settings.n_trials, injector, limit_s)
        violations = check_study(server.url, name, settings.n_trials)
        scored: dict[str, Any] = {}
        if plan is not None and score_export:
            extra = ["--tasks-path", paths["tasks_path"], "--limit", str(settings.limit)]
            extra += ["--batch-size", "8"]
            scored = export_and_score(config, server.url, name, disk / "knee", "c1_pick", extra)
    texts = launches.stderr_texts()
    return SoakReport(
        name=name,
        wall_s=wall,
        launches=len(launches.exits),
        exits=launches.exits,
        faults=dict(injector.applied()) if injector is not None else {},
        retries=retries_of(name, server.url),
        violations=violations,
        tracebacks=tracebacks(texts),
        dropped=sum(t.count("its result is dropped") for t in texts),
        export=scored,
        events=injector.events if injector is not None else [],
        full_exports=injector.full_exports if injector is not None else [],
        outlived_s=injector.outlived_s if injector is not None else [],
    )
