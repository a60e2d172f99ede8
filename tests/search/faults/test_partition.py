"""Two hosts, one partition: a study on a PostgreSQL server of the test's own, run from two
network namespaces of the test's own (:mod:`tests.search.faults.netns`): host A runs
``merge-search launch`` (one worker), host B ``merge-search worker``, each reaching the server
over its own veth link.

The link of one host goes down for three times the grace period (and until the other host has
failed the trial it held). The other host keeps working: it finds the trial's heartbeat
unchanged for the grace period, fails it as stale and queues it again. The cut-off host's
connections fall silent; once the link is back it finds its trial no longer its own, drops its
result with one line and goes on with the next trial (a cut shorter than
``workers.storage_retry_s`` is a pause, not an end). Cut twice: host B (a lone worker) while it
evaluates a trial, holding no lock; then host A (the launcher and its worker) as its worker
writes a trial's plan, one transaction per field, so mostly inside one that holds the trial's
row lock, which the other host's stale check waits for. At the end both exit 0, no traceback,
and the soak's checker holds (:func:`tests.search.faults.checker.check_study`).

Two storage-level tests pin what the second cut needs: a host cut off inside the budget lock
does not keep it (the server closes its silent session), and a host cut off for good gives up
after ``workers.storage_retry_s`` (its own end gives up on the silence too).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from search.study.record import TrialRecord
from search.study.storage import budget_lock, connect
from tests.search.faults.checker import check_study
from tests.search.faults.netns import Host, hosts, leftovers
from tests.search.faults.storage_client import WORKERS
from tests.search.pg_server import throwaway_server
from tests.search.study_fixtures import (
    REPO,
    build_pool_and_tasks,
    create_study,
    in_group,
    study_config,
    wait_for,
    write_config,
)

State = optuna.trial.TrialState
GRACE_S = 3
CUT_S = 3 * GRACE_S  # the link stays down this long (and at least until the trial is retried)
# both cuts fall inside the budget on a fast machine too: while one host is cut off (at least
# CUT_S) the other runs alone, up to ~5 trials a second on an idle 2-core machine; at 48 the
# budget was spent before the second cut there
N_TRIALS = 160


def on_host(host: Host, args: list[str], cwd: Path) -> subprocess.Popen:
    """``merge-search ARGS`` inside ``host``'s namespace, in a process group of its own."""
    return in_group(host.command([sys.executable, "-m", "search.cli", *args]), cwd=cwd)


class Watch:
    """The study as the root namespace sees it (over the server's unix socket: never cut)."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self._study: optuna.Study | None = None

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        if self._study is None:
            try:
                self._study = optuna.load_study(study_name=self.name, storage=self.url)
            except KeyError:
                return []  # not created yet
        return self._study.get_trials(deepcopy=False)

    def notes(self) -> set[int]:
        """The ids of the trials whose note is written (optuna-dashboard's study attrs)."""
        if self._study is None:
            return set()
        keys = self._study._storage.get_study_system_attrs(self._study._study_id)
        return {int(k.split(":")[1]) for k in keys if re.fullmatch(r"dashboard:\d+:note_ver", k)}

    def trial(self, number: int) -> optuna.trial.FrozenTrial:
        return next(t for t in self.trials() if t.number == number)


def pid_of(t: optuna.trial.FrozenTrial) -> int | None:
    """The pid in the trial's worker tag (``host:pid:device``)."""
    tag = TrialRecord.from_trial(t).worker
    return int(tag.split(":")[1]) if tag else None


def held_by(watch: Watch, number: int, pids: set[int]) -> bool:
    """Trial ``number`` is RUNNING under one of ``pids``."""
    t = watch.trial(number)
    return t.state == State.RUNNING and pid_of(t) in pids


def begun(watch: Watch, host: Host, stage: str) -> Callable[[], int | None]:
    """A poll that returns a trial of ``host``'s workers that reached ``stage`` since the last
    poll, or ``None``. ``"plan"``: its plan was written (its worker is writing what it merges,
    one transaction per field); ``"eval"``: its note too, the last write before the worker
    merges and evaluates, and its plan was not scored before (it is evaluated, not reused)."""
    seen: set[int] | None = None

    def poll() -> int | None:
        nonlocal seen
        pids = host.pids()  # a worker the launcher is still starting counts once it runs
        trials = watch.trials()
        notes = watch.notes() if stage == "eval" else set()
        scored = {TrialRecord.from_trial(t).plan_key for t in trials if t.state == State.COMPLETE}
        now = set()
        for t in trials:
            key = TrialRecord.from_trial(t).plan_key
            if t.state != State.RUNNING or pid_of(t) not in pids or key is None:
                continue
            if stage == "plan" or (t._trial_id in notes and key not in scored):
                now.add(t.number)
        fresh = sorted(now - seen) if seen is not None else []
        seen = (seen or set()) | now
        return fresh[0] if fresh else None

    return poll


def retried(t: optuna.trial.FrozenTrial) -> int | None:
    """The trial ``t`` repeats (the last of its retry history), if it is a retry."""
    history = t.system_attrs.get("retry_history") or [None]
    return history[-1]


def retry_of(watch: Watch, number: int) -> optuna.trial.FrozenTrial | None:
    """The trial queued again to repeat trial ``number``."""
    return next((t for t in watch.trials() if retried(t) == number), None)


def cut_at(host: Host, stage: str, watch: Watch, procs: list[subprocess.Popen]) -> int:
    """Cut ``host`` off as soon as a trial of its worker reaches ``stage`` (:func:`begun`),
    until the other host has failed that trial as stale and queued it again, and at least
    ``CUT_S``; the trial's number."""
    for _attempt in range(10):
        fresh = begun(watch, host, stage)
        (number,) = wait_for(
            lambda fresh=fresh: [n] if (n := fresh()) is not None else None,
            f"{host.name} starting a trial",
            procs[0],
        )
        host.cut()
        cut_at = time.monotonic()
        try:
            time.sleep(0.5)  # a write in flight before the cut has landed (or never will)
            if not held_by(watch, number, host.pids()):
                continue  # told just before the cut, or a retry not yet tagged: again
            for proc in procs:
                assert proc.poll() is None, proc.communicate()[1]
            wait_for(
                lambda number=number: retry_of(watch, number),
                f"trial {number} failed and queued again",
            )
            time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
            return number
        finally:
            host.heal()
    raise AssertionError(f"never cut {host.name} off at a trial's {stage}")


DROPPED = r"trial {n} is (FAIL|finished): failed as stale while this worker was paused or cut off"


def test_a_host_cut_off_past_the_grace_period_corrupts_nothing(tiny_zoo, tmp_path: Path) -> None:
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    name = "partition"
    with hosts(2) as (a, b):
        listen = f"{a.server_ip},{b.server_ip}"
        with throwaway_server(listen=listen, trust=(a.subnet, b.subnet)) as server:
            workers = {"heartbeat_s": 1, "grace_s": GRACE_S, "max_retry": 3, "threads": 1}
            data = study_config(
                paths,
                name,
                server.tcp_url(a.server_ip),
                budget={"n_trials": N_TRIALS},
                workers=workers,
            )
            data["eval"]["limit"] = 10  # trials long enough to be cut mid-way
            config = write_config(tmp_path / "partition.yaml", data)
            watch = Watch(server.url, name)
            create_study(config)  # before either host starts: both load at the same time
            storage_b = server.tcp_url(b.server_ip)
            launcher = on_host(a, ["launch", str(config), "--workers", "1"], tmp_path)
            worker = on_host(b, ["worker", str(config), "--storage", storage_b], tmp_path)
            try:
                cut_b = cut_at(b, "eval", watch, [worker, launcher])  # holds no lock
                cut_a = cut_at(a, "plan", watch, [launcher, worker])  # in a write, mostly
                _, err_a = launcher.communicate(timeout=600)  # guards, not timed assertions
                _, err_b = worker.communicate(timeout=600)
            finally:
                for proc in (launcher, worker):
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.communicate()
            ts = {t.number: t for t in watch.trials()}
            violations = check_study(server.url, name, N_TRIALS)
    assert not leftovers(os.getpid())
    assert launcher.returncode == 0, err_a
    assert worker.returncode == 0, err_b
    assert "Traceback" not in err_a + err_b, err_a + err_b
    assert violations == [], violations
    for n, err in ((cut_b, err_b), (cut_a, err_a)):
        cut = ts[n]
        assert cut.state == State.FAIL and cut.values is None  # its result is not the study's
        # run again by whichever host claimed it first; on a busy machine a retry's worker can
        # itself be failed as stale (and drop its result), so the chain may be longer
        chain = [t for t in ts.values() if n in t.system_attrs.get("retry_history", [])]
        trail = [(t.number, t.state.name, pid_of(t), retried(t)) for t in chain]
        assert [t.state for t in chain].count(State.COMPLETE) == 1, trail
        said = [line for line in err.splitlines() if re.search(DROPPED.format(n=n), line)]
        assert len(said) == 1, err  # the cut-off worker went on after one line


def client(host: Host, *args: str) -> subprocess.Popen:
    """:mod:`tests.search.faults.storage_client` on ``host``; returns once it said ``ready``."""
    proc = subprocess.Popen(
        host.command([sys.executable, "-m", "tests.search.faults.storage_client", *args]),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.wait(timeout=60)
        raise AssertionError(proc.communicate()[1])
    return proc


def test_a_host_cut_off_inside_the_budget_lock_releases_it_after_the_grace_period() -> None:
    """A worker's session silent for the grace period is closed by the server: the budget lock
    it held goes free and the other hosts claim again (without, the server kept it for the
    kernel's keepalive time, two hours: every host's claim waited that long)."""
    with hosts(1) as (b,), throwaway_server(listen=b.server_ip, trust=(b.subnet,)) as server:
        holder = client(b, "hold-lock", server.tcp_url(b.server_ip), "cut")
        b.cut()
        try:
            here = connect(server.url, WORKERS)
            acquired = threading.Event()

            def claim() -> None:
                with budget_lock(here, "cut"):
                    acquired.set()

            threading.Thread(target=claim, daemon=True).start()
            wait_for(acquired.is_set, "the budget lock of the cut-off host", limit_s=60)
        finally:
            b.heal()
            os.killpg(holder.pid, signal.SIGKILL)
            holder.communicate()


def test_a_host_cut_off_for_good_gives_up_after_storage_retry_s() -> None:
    """The cut-off host's own calls fail after the grace period's silence, so the storage's
    outage limit (``workers.storage_retry_s``) holds: one line and exit 2 (without, a pooled
    connection's call hung for the kernel's retransmission limit, about 15 minutes)."""
    with hosts(1) as (b,), throwaway_server(listen=b.server_ip, trust=(b.subnet,)) as server:
        caller = client(b, "call-after-cut", server.tcp_url(b.server_ip))
        b.cut()
        try:
            _, err = caller.communicate("go\n", timeout=120)  # a guard, not a timed assertion
        finally:
            b.heal()
            if caller.poll() is None:
                os.killpg(caller.pid, signal.SIGKILL)
                caller.communicate()
    assert caller.returncode == 2, err
    assert re.fullmatch(r"storage of the cut host unreachable for \d+ s \(.+\)\n", err), err
