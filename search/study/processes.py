"""The worker processes of a launch: spawn them, hear from them, stop them.

- :class:`WorkerGroup`: ``n`` processes started with ``spawn``, each given one
  :class:`WorkerParams`; they report :class:`Ready`, :class:`Failed` and :class:`Done`
  on a queue and wait for the launcher's "go" before their first trial;
- stopping: Ctrl-C reaches the launcher only (:func:`ctrl_c` turns it into an event its loops
  poll); the launcher asks each worker to stop with SIGTERM, which unwinds the trial in progress
  (it is failed and queued again), re-delivered until acted on (:func:`raise_system_exit`), and
  kills a worker that has not stopped after ``STOP_GRACE_S``;
- parent death: a worker whose launcher dies, even by SIGKILL, stops itself
  (:func:`die_with_parent`);
- seeds: :func:`worker_sampler` gives every worker of every launch its own sampler seed.
"""

from __future__ import annotations

import faulthandler
import hashlib
import multiprocessing
import os
import queue
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from search.errors import UserError
from search.study.samplers import build_sampler, constraints_func
from search.study.storage import (
    load_study,
    open_storage,
    redact,
    release_trials,
    retrying,
)
from search.study.worker import Runtime, quiet_libraries, run_worker

if TYPE_CHECKING:
    from search.study.config import StudyConfig

READY_TIMEOUT_S = 1800  # a worker loading a large model from a slow disk may take this long
STOP_GRACE_S = 60  # after Ctrl-C, how long workers get to hand their trial back
REDELIVER_S = 0.5  # a stop request a worker dropped (see raise_system_exit) comes again
PARENT_POLL_S = 1.0  # how often a worker checks that its launcher is alive (without prctl)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


# ------------------------------------------------------------------------------- worker events


@dataclass(frozen=True)
class Ready:
    """A worker has its model and evaluator and waits for the go; ``load_s``: seconds per part."""

    worker: int
    load_s: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in self.load_s.items())
        return f"worker {self.worker} loaded in {sum(self.load_s.values()):.1f} s ({parts})"


@dataclass(frozen=True)
class Failed:
    """A worker stopped: ``user_error`` for bad input (one line), else a traceback."""

    worker: int
    message: str
    user_error: bool


@dataclass(frozen=True)
class Note:
    """A line a worker has to show (e.g. a result it dropped: its trial was failed as stale)."""

    worker: int
    message: str


@dataclass(frozen=True)
class Done:
    """A worker ran out of budget or time."""

    worker: int
    n_trials: int
    stopped: str  # "budget" | "timeout"


WorkerEvent = Ready | Failed | Done


def worker_sampler(
    cfg: StudyConfig, study: optuna.Study, worker: int, launch_token: int | None
) -> optuna.samplers.BaseSampler:
    """The sampler of one worker: the config's, its seed varied by the worker's index, the
    trials already in the study and (:func:`worker_nonce`) this process and its launch, the
    constraints of the config and the strategies wired in.

    ``launch_token`` ``None``: the launch that created the study (seeds as they always were).
    """
    return build_sampler(
        cfg.sampler,
        constraints=constraints_func(bool(cfg.constraints), cfg.strategies),
        worker=worker,
        salt=len(study.get_trials(deepcopy=False)),
        nonce=0 if launch_token is None else worker_nonce(launch_token),
    )


def worker_nonce(launch_token: int) -> int:
    """A 63-bit number unique to this process of this launch: the host, the pid and the
    launch's random token, so two launches on one study (on one host or several) never give
    two workers the same sampler seed."""
    text = f"{socket.gethostname()}:{os.getpid()}:{launch_token}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1 or 1


# ------------------------------------------------------------------------------------ Ctrl-C


@contextmanager
def ctrl_c() -> Iterator[threading.Event]:
    """Ctrl-C that cannot be lost and breaks nothing: the handler only sets the event, and the
    launcher's loops (each waits at most a second) raise KeyboardInterrupt when they see it.

    Raised from the handler, it could land anywhere: inside a garbage-collector callback (where
    it is printed and dropped) or inside the storage's session, leaving a SQLite read
    transaction open that blocks every worker's write (the stopping workers then cannot hand
    their trials back and are killed after ``STOP_GRACE_S``, their trials left RUNNING).
    """
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return

    def handler(signum: int, frame: Any) -> None:
        pressed.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------------- worker processes


@dataclass(frozen=True)
class WorkerParams:
    """What one spawned worker is given (pickled to its process when it starts).

    Attributes:
        cfg: the study config, validated by the launcher.
        index: the worker's number in its launch: its sampler's seed index, its name in events.
        threads: torch threads on the CPU.
        deadline: ``time.time()`` after which it starts no trial (``budget.timeout_s``).
        device: where its model and evaluator live.
        placement: the pool placement the launcher decided once for every worker.
        parent: the launcher's pid (:func:`die_with_parent`).
        events: the queue it reports :class:`Ready`, :class:`Failed` and :class:`Done` on.
        go: set by the launcher once the study exists.
        launch_token: 0 for the launch that created the study, else a random token
            (:func:`worker_sampler`); read after the go.
    """

    cfg: StudyConfig
    index: int
    threads: int
    deadline: float | None
    device: str
    placement: str | None
    parent: int
    events: Any
    go: Any
    launch_token: Any


class WorkerGroup:
    """N spawned worker processes, the events they report, and a "go" event to them."""

    def __init__(
        self,
        cfg: StudyConfig,
        n_workers: int,
        threads: int,
        deadline: float | None,
        devices: Sequence[str] | None = None,
        placement: str | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._events: Any = ctx.Queue()
        self._go = ctx.Event()
        # 0 for the launch that created the study, else a random token (worker_sampler)
        self._launch_token: Any = ctx.Value("q", 0)
        devices = list(devices or [cfg.device] * n_workers)
        self._procs = [
            ctx.Process(
                target=_worker_main,
                name=f"merge-search-worker-{i}",
                daemon=False,
                args=(
                    WorkerParams(
                        cfg,
                        i,
                        threads,
                        deadline,
                        devices[i],
                        placement,
                        os.getpid(),
                        self._events,
                        self._go,
                        self._launch_token,
                    ),
                ),
            )
            for i in range(n_workers)
        ]
        self.user_errors: list[str] = []
        self.timed_out = False
        self._ready = 0
        self._reported: set[int] = set()
        self._released: set[int] = set()

    def __enter__(self) -> WorkerGroup:  # noqa: PYI034
        for p in self._procs:
            p.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            for p in self._procs:
                p.join()
            return
        self.stop()

    def stop(self) -> None:
        """Ask workers to hand their trial back (SIGTERM), then kill the ones that do not stop."""
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        end = time.time() + STOP_GRACE_S
        for p in self._procs:
            p.join(max(0.0, end - time.time()))
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGUSR1)  # its stack to stderr (faulthandler): why stuck
                p.join(1.0)
                p.kill()
                p.join()

    def wait_first_ready(self, pressed: threading.Event | None = None) -> Ready:
        """Block until one worker has its model and evaluator (its event); raise its error if all
        fail first, ``KeyboardInterrupt`` once ``pressed`` is set."""
        end = time.time() + READY_TIMEOUT_S
        failures: list[str] = []
        first: Ready | None = None
        while self._ready == 0:
            if pressed is not None and pressed.is_set():
                raise KeyboardInterrupt
            try:
                event = self._events.get(timeout=1.0)
            except queue.Empty:
                if not self.alive() and self._events.empty():
                    break
                if time.time() > end:
                    raise UserError(f"workers: none was ready after {READY_TIMEOUT_S} s") from None
                continue
            if isinstance(event, Ready):
                self._ready += 1
                first = event
            elif isinstance(event, Failed):
                if event.user_error:  # the same bad input stops every worker: report it now
                    raise UserError(event.message)
                failures.append(event.message)
            if len(failures) == len(self._procs):
                break
        if first is None:
            detail = failures[0] if failures else "exited before reporting (see above)"
            raise RuntimeError(f"no worker could start: {detail}")
        return first

    def go(self, *, fresh: bool = False) -> None:
        """Start the workers; ``fresh``: this launch created the study."""
        self._launch_token.value = 0 if fresh else secrets.randbits(62) + 1
        self._go.set()

    def alive(self) -> bool:
        return any(p.is_alive() for p in self._procs)

    def messages(self) -> Iterator[str]:
        """Lines to show for what workers reported since the last call."""
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, Ready):
                yield event.describe()
            elif isinstance(event, Failed) and event.user_error:
                self.user_errors.append(event.message)
                yield f"worker {event.worker}: error: {event.message}"
            elif isinstance(event, Failed):
                yield f"worker {event.worker} failed:\n{event.message.rstrip()}"
            elif isinstance(event, Note):
                yield f"worker {event.worker}: {event.message}"
            elif isinstance(event, Done) and event.stopped == "timeout":
                self.timed_out = True
        for index, p in enumerate(self._procs):
            if p.exitcode is not None and p.exitcode < 0 and index not in self._reported:
                self._reported.add(index)
                yield f"worker {index} was killed by signal {-p.exitcode}"

    def release(self, study: optuna.Study, storage: optuna.storages.RDBStorage) -> Iterator[str]:
        """Fail and queue again the running trials of workers killed by a signal (by the stop
        after ``STOP_GRACE_S``, or by anything else): lines saying which."""
        host = socket.gethostname()
        for index, p in enumerate(self._procs):
            if p.exitcode is None or p.exitcode >= 0 or index in self._released:
                continue
            numbers = release_trials(study, storage, f"{host}:{p.pid}:")
            self._released.add(index)  # after: a release cut short by an outage is tried again
            if numbers:
                listed = ", ".join(str(n) for n in numbers)
                yield f"worker {index}: its trial {listed} failed and queued again"


def _worker_main(params: WorkerParams) -> None:
    """Entry point of one spawned worker process.

    Ctrl-C reaches the launcher only (SIGINT ignored here); the launcher stops workers with
    SIGTERM, which unwinds the trial in progress: it is failed and queued again. A worker
    whose launcher dies (even by SIGKILL) gets the same SIGTERM (:func:`die_with_parent`).
    """
    os.environ["TQDM_DISABLE"] = "1"  # before lm-eval / transformers import tqdm
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, raise_system_exit)
    signal.signal(signal.SIGALRM, raise_system_exit)
    sys.unraisablehook = _quiet_dropped_stop
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a worker that will not stop
    die_with_parent(params.parent)
    opened: list[tuple[optuna.Study, optuna.storages.RDBStorage]] = []
    try:
        code = _worker_body(params, opened)
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:  # stopped (SIGTERM) while loading or waiting for the go
        code = exc.code if isinstance(exc.code, int) else 1
    # the body is done (its trial handed back or finished): a stop from now on would only
    # interrupt the interpreter's own exit (atexit, finalizers) and print a traceback there
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    if code != 0 and opened:
        _release_own(*opened[0])
    sys.exit(code)


def _release_own(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """The last guard of a worker that stops early: fail and queue again any trial still
    RUNNING under its own tag (``host:pid:``). ``run_worker`` hands its trial back as it
    unwinds; a stop that lands again inside that hand-back would leave the trial running
    until its heartbeat goes stale, or, with its launcher gone, until the next launch.
    Stops are ignored by now, so this runs to its end; a storage that fails here leaves the
    trial to go stale, as before."""
    try:
        release_trials(study, storage, f"{socket.gethostname()}:{os.getpid()}:")
    except Exception:  # noqa: BLE001, S110 - the trial goes stale instead
        pass


def _worker_body(
    params: WorkerParams, opened: list[tuple[optuna.Study, optuna.storages.RDBStorage]]
) -> int:
    """Load the model and evaluator, report :class:`Ready`, wait for the go, run trials to the
    budget; report how it ended. Returns the exit status (2: bad input, 1: a failure).
    ``opened`` gets the study and storage once they are open (:func:`_release_own`)."""
    cfg, index, events = params.cfg, params.index, params.events
    quiet_libraries()
    try:
        runtime = Runtime.create(
            cfg, threads=params.threads, device=params.device, placement=params.placement
        )
    except UserError as exc:
        events.put(Failed(index, str(exc), user_error=True))
        return 2
    except Exception:  # noqa: BLE001 - reported to the launcher, which prints it
        events.put(Failed(index, traceback.format_exc(), user_error=False))
        return 1
    events.put(Ready(index, runtime.load_s))
    while not params.go.wait(1.0):  # a launcher that dies meanwhile stops this (die_with_parent)
        pass
    try:
        where, limit = f"storage {redact(cfg.storage)}", cfg.workers.storage_retry_s
        storage = retrying(lambda: open_storage(cfg), where, limit)
        study = retrying(lambda: load_study(cfg, storage), where, limit)
        opened.append((study, storage))
        token = params.launch_token.value
        study.sampler = retrying(
            lambda: worker_sampler(cfg, study, index, token or None), where, limit
        )
        result = run_worker(
            cfg,
            study,
            storage,
            runtime,
            deadline=params.deadline,
            on_note=lambda line: events.put(Note(index, line)),
        )
    except UserError as exc:
        events.put(Failed(index, str(exc), user_error=True))
        return 2
    except Exception:  # noqa: BLE001
        events.put(Failed(index, traceback.format_exc(), user_error=False))
        return 1
    events.put(Done(index, result.n_trials, result.stopped))
    return 0


def die_with_parent(parent: int) -> None:
    """Stop this worker (SIGTERM: its trial is failed and queued again) when ``parent`` dies.

    Linux delivers the signal itself once the parent exits (``prctl(PR_SET_PDEATHSIG)``, also
    after a SIGKILL of the parent); elsewhere a daemon thread checks the parent every
    ``PARENT_POLL_S``. A parent gone before the prctl took effect is found at once.
    """
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    elif not armed:  # one stop only: a second, a moment after the first, could cut its hand-back
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _quiet_dropped_stop(unraisable: Any) -> None:
    """Say nothing of a stop raised where Python drops exceptions (a garbage-collector
    callback, any library's): it is delivered again (:func:`raise_system_exit`); nor, once
    the worker is stopping (the re-delivery armed, or disarmed by the trial's hand-back), of
    the finalizers of objects the stop cut short (e.g. a ``tqdm`` whose ``__init__`` it
    interrupted)."""
    stopping = (
        signal.getitimer(signal.ITIMER_REAL)[0] > 0
        or signal.getsignal(signal.SIGALRM) == signal.SIG_IGN
    )
    if isinstance(unraisable.exc_value, SystemExit) or stopping:
        return
    sys.__unraisablehook__(unraisable)


def raise_system_exit(signum: int, frame: Any) -> None:
    """Unwind the worker: the trial in progress is failed and queued again (``run_worker``).

    Python runs a signal handler at the next bytecode, which may be inside a garbage-collector
    weakref callback, where an exception is printed and dropped: the stop would be lost and
    the worker killed mid-trial after ``STOP_GRACE_S``. So the stop is delivered again every
    ``REDELIVER_S`` (SIGALRM) until ``run_worker`` acts on it and disarms the timer.
    """
    signal.setitimer(signal.ITIMER_REAL, REDELIVER_S)
    if frame is not None and frame.f_code.co_filename.endswith("weakref.py"):
        return  # raising here would be dropped (and printed): the timer delivers it again
    raise SystemExit(128 + (signal.SIGTERM if signum == signal.SIGALRM else signum))
