"""Launching a study: prepare it, run worker processes to the budget, summarize.

:func:`launch` reads top to bottom:

1. **prepare** (:func:`prepare`): the config is already validated; check the tasks (names,
   group members, data in the local caches, consent to run code), read the checkpoints'
   safetensors headers, build the search space and the study's signature (the strategies read
   their data here, e.g. a Fisher method's calibration examples), open the storage once (when
   the study can already exist) and, on resume, check that the checkpoints, the search space
   and the scoring are unchanged;
2. **precompute** (:func:`precompute`): what no worker should do on its own, in one scratch
   pool and model released before the workers start: the strategies' precompute hook
   (:mod:`search.study.features`: the Fisher cache, a new study's Frank-Wolfe paths, whose
   endpoints become seed trials);
3. **run workers**: ``n_workers`` processes (``spawn``) each build ONE resident model and ONE
   evaluator, worker ``i`` on GPU ``i mod G`` with ``device: auto``/``cuda`` on a host with G GPUs
   (:func:`search.engine.device.worker_device`), every worker with the same pool placement
   (:func:`pool_placement`, decided here once); the study is created only once the first worker
   is ready, so a bad task or model leaves nothing behind; the launcher says how long that took
   (seconds to the first trial), then shows the study's progress (the :class:`Console` the
   command gives renders every line and the progress bar);
4. **summary**: trials finished, reused and retried, examples scored (as full-evaluation
   equivalents), and what to run next.

:func:`join` is ``merge-search worker``: one worker in the foreground on an existing study
(another shell or host, same config and storage URL). Workers report to the launcher with the
named events below.
"""

from __future__ import annotations

import faulthandler
import gc
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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import optuna
import torch

from search.engine.device import local_gpu_count, worker_device
from search.engine.placement import (
    PlacementChoice,
    choose_placement,
    device_free_bytes,
    host_available_bytes,
)
from search.engine.pool import CheckpointPool
from search.engine.registry import METHODS
from search.errors import UserError
from search.study.features import Scratch
from search.study.record import TrialRecord
from search.study.samplers import build_sampler, check_options, constraints_func
from search.study.space import SearchSpace
from search.study.storage import (
    EVALUATION_SIZE_ATTR,
    Budget,
    create_or_resume,
    examples_spent,
    finished,
    full_evaluations,
    is_outage,
    load_checked,
    load_study,
    open_storage,
    redact,
    release_trials,
    retrying,
    signature,
    sqlite_path,
    trial_counts,
)
from search.study.worker import Runtime, quiet_libraries, run_worker

if TYPE_CHECKING:
    from search.study.config import StudyConfig

READY_TIMEOUT_S = 1800  # a worker loading a large model from a slow disk may take this long
STOP_GRACE_S = 60  # after Ctrl-C, how long workers get to hand their trial back
REDELIVER_S = 0.5  # a stop request a worker dropped (see _raise_system_exit) comes again
JOIN_SEED_OFFSET = 1000  # a joining worker's sampler seed index, apart from launch's 0..N-1


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
class Done:
    """A worker ran out of budget or time."""

    worker: int
    n_trials: int
    stopped: str  # "budget" | "timeout"


WorkerEvent = Ready | Failed | Done


# ------------------------------------------------------------------------------------ console


class Console(Protocol):
    """Where the launcher's events go; the command renders them (``search.commands.launch``).

    ``say`` gets a status line; ``progress`` wraps the run with something that shows the study
    (``refresh()`` after each poll, ``write(line)`` for a worker's message).
    """

    def say(self, line: str) -> None: ...

    def progress(self, cfg: StudyConfig, study: optuna.Study) -> AbstractContextManager[Any]: ...


@dataclass(frozen=True)
class LaunchResult:
    """What a launch (or a joined worker) did: the exit status and the summary line."""

    code: int
    summary: str


# ------------------------------------------------------------------------------------ prepare


@dataclass
class Prepared:
    """Everything checked before a worker starts.

    Attributes:
        storage: the storage, opened once; ``None`` while the SQLite file does not exist yet
            (it is created only once a worker is ready).
        study: the existing study on resume, else ``None``.
    """

    cfg: StudyConfig
    config_path: str | Path
    pool: CheckpointPool
    space: SearchSpace
    signature: dict[str, Any]
    storage: optuna.storages.RDBStorage | None
    study: optuna.Study | None

    def budget_spent(self) -> bool:
        """The existing study has spent its budget (trials, or examples: no full evaluation
        fits any more, as counted by :class:`~search.study.storage.Budget`) and none runs."""
        if self.study is None:
            return False
        trials = self.study.get_trials(deepcopy=False)
        if trial_counts(self.study).get("running"):
            return False
        return not budget_of(self.cfg, self.study).allows_another(trials)


def budget_of(cfg: StudyConfig, study: optuna.Study) -> Budget:
    """The config's budget; the size of a full evaluation as the study's workers recorded it."""
    per_trial = int(study.user_attrs.get(EVALUATION_SIZE_ATTR, 0))
    return Budget(cfg.n_trials, cfg.budget.examples, per_trial)


def budget_text(cfg: StudyConfig) -> str:
    """``"100 trials"`` or ``"100 trials or 40,000 examples"``."""
    examples = f" or {cfg.budget.examples:,} examples" if cfg.budget.examples else ""
    return f"{cfg.n_trials} trials{examples}"


def prepare(
    cfg: StudyConfig, config_path: str | Path, *, storage_must_exist: bool = False
) -> Prepared:
    """Sampler options → tasks → checkpoint headers → strategies' data → space → signature →
    storage (opened once) → resume checks.

    ``storage_must_exist``: a joining worker needs the study (``UserError`` when missing).
    """
    check_options(cfg.sampler, constrained=bool(cfg.constraints), where=config_path)
    check_scoring(cfg, config_path)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    space = SearchSpace.build(cfg, pool.names)
    sig = signature(cfg, space, pool.fingerprint())  # strategies read their data here
    db = sqlite_path(cfg.storage)
    exists = db is None or db.is_file()
    storage = open_storage(cfg) if exists or storage_must_exist else None
    study = None
    if storage is not None and (
        storage_must_exist or cfg.name in optuna.get_all_study_names(storage)
    ):
        study = load_checked(cfg, storage, sig, config_path)
    return Prepared(cfg, config_path, pool, space, sig, storage, study)


def precompute(prepared: Prepared, say: Callable[[str], None]) -> None:
    """What no worker should do on its own: each strategy's :meth:`~search.study.features.
    Feature.precompute` (the Fisher cache, a new study's Frank-Wolfe paths).

    They need the pool's tensors and a model: loaded once here in a scratch pool and model,
    released before any worker starts.
    """
    cfg = prepared.cfg
    new_study = prepared.study is None
    busy = [f for f in cfg.features if f.needs_precompute(new_study)]
    if not busy:
        return
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    pool.load(base=METHODS[cfg.merge.method].needs_base)
    model, tokenizer = pool.load_model()
    scratch = Scratch(pool, model, tokenizer, prepared.space)
    for feature in busy:
        for line in feature.precompute(scratch, new_study):
            say(line)
    del model, tokenizer, pool, scratch
    gc.collect()


def check_scoring(cfg: StudyConfig, config_path: str | Path) -> None:
    """The objectives' and held-out tasks' checks that need no model (names, group members,
    consent to run code, data in the local caches; with ``eval.backend: vllm`` that vLLM is
    installed, supports the model and accepts ``eval.vllm``), before any worker starts."""
    from evaluators import check_objectives

    spec = cfg.eval_spec()
    reference = cfg.base_model or cfg.checkpoints[0]  # the folder workers load the model from
    try:
        check_objectives(cfg.split_objectives("search"), spec, reference, cfg.dtype)
        if cfg.eval.heldout:
            check_objectives(cfg.heldout_objectives(), spec)
    except UserError as exc:
        raise UserError(f"{config_path}: {exc}") from None


# ------------------------------------------------------------------------------------- launch


def launch(
    cfg: StudyConfig, config_path: str | Path, console: Console, *, n_workers: int = 1
) -> LaunchResult:
    """Create or resume the study and run ``n_workers`` worker processes to the budget.

    Returns:
        code 0 when the budget (or the timeout) was reached, 1 when workers failed before that.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    prepared = prepare(cfg, config_path)
    if prepared.budget_spent():
        raise_it = "--n-trials" if not cfg.budget.examples else "--n-trials or budget.examples"
        return LaunchResult(
            0,
            f"study {cfg.name!r} has already spent its budget of {budget_text(cfg)}; "
            f"raise {raise_it} to run more",
        )
    precompute(prepared, console.say)
    deadline = started + cfg.budget.timeout_s if cfg.budget.timeout_s else None
    threads = cfg.workers.threads or max(1, (os.cpu_count() or 1) // n_workers)
    gpus = local_gpu_count()
    devices = [worker_device(cfg.device, i, gpus) for i in range(n_workers)]
    choice = pool_placement(cfg, prepared.pool, devices)
    where = devices[0] if len(set(devices)) == 1 else ", ".join(devices)
    console.say(
        f"starting {n_workers} worker(s) on {where}: each loads the model and the evaluator once"
    )
    console.say(choice.reason)
    study = None
    storage = prepared.storage
    group = WorkerGroup(cfg, n_workers, threads, deadline, devices, choice.placement)
    try:
        with ctrl_c() as pressed, group:
            first = group.wait_first_ready(pressed)
            storage = storage or open_storage(cfg, create=True)
            study, created = create_or_resume(
                cfg, storage, prepared.space, prepared.pool.fingerprint(), config_path
            )
            console.say(
                f"study {cfg.name!r} {'created' if created else 'resumed'} in "
                f"{redact(cfg.storage)}: {n_workers} worker(s), budget {budget_text(cfg)}"
            )
            group.go(fresh=created)
            console.say(
                f"first trial {time.time() - started:.1f} s after the start; {first.describe()}"
            )
            with console.progress(cfg, study) as progress:
                while group.alive():
                    for line in group.messages():
                        progress.write(line)
                    poll(group, study, storage, progress)
                    if pressed.wait(1.0):  # Ctrl-C (ctrl_c)
                        raise KeyboardInterrupt
                for line in group.messages():
                    progress.write(line)
                poll(group, study, storage, progress)
    except KeyboardInterrupt:
        if study is not None and storage is not None:
            for line in group.release(study, storage):
                console.say(line)
            console.say(
                f"study {cfg.name!r}: stopped at {finished(trial_counts(study))}/"
                f"{cfg.n_trials} finished trials; run the same command to continue"
            )
        raise
    # the workers waited out any outage; one that gave up on the storage: the summary does not wait
    limit = 0 if group.user_errors else cfg.workers.storage_retry_s
    return retrying(
        lambda: summary(cfg, study, group, config_path, time.time() - started),
        f"storage {redact(cfg.storage)}",
        limit,
    )


def poll(
    group: WorkerGroup,
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    progress: Any,
) -> None:
    """Release killed workers' trials and refresh the progress display; skipped while the
    storage is out (:func:`~search.study.storage.is_outage`): the workers wait it out (or give
    up, each saying so) and the next poll catches up."""
    try:
        for line in group.release(study, storage):
            progress.write(line)
        progress.refresh()
    except Exception as exc:
        if not is_outage(exc):
            raise


def summary(
    cfg: StudyConfig,
    study: optuna.Study,
    group: WorkerGroup,
    config_path: str | Path,
    seconds: float,
) -> LaunchResult:
    """What the launch did, and the exit status (a worker's bad input re-raised)."""
    everything = study.get_trials(deepcopy=False)
    records = [TrialRecord.from_trial(t) for t in everything]
    done = finished(trial_counts(study))
    dup = sum(1 for r in records if r.duplicate_of is not None)
    rescored = rescored_plans(everything)
    again = f", {rescored} scored a plan another trial scored at the same time" if rescored else ""
    retried = {t.system_attrs.get("failed_trial") for t in everything} - {None}
    extra = "".join(f", {text}" for f in cfg.features if (text := f.summary(records)))
    line = (
        f"study {cfg.name!r}: {done}/{cfg.n_trials} trials finished "
        f"({dup} reused a scored plan{again}, {len(retried)} retried after a failure or "
        f"interruption{extra}), {examples_text(cfg, study, everything)} in {seconds:.0f} s"
    )
    if not budget_of(cfg, study).allows_another(everything):
        return LaunchResult(0, f"{line}; next: merge-search pareto {config_path}")
    if group.timed_out:
        return LaunchResult(
            0, f"{line}; stopped by budget.timeout_s; run the same command to continue"
        )
    if group.user_errors:
        raise UserError(group.user_errors[0])
    return LaunchResult(1, f"{line}; workers failed (see above); run the same command to continue")


def rescored_plans(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Complete trials that scored a plan an earlier complete trial had scored too (not reused:
    both ran at once): the plans scored twice, counted truthfully."""
    seen: set[str] = set()
    again = 0
    for t in sorted(trials, key=lambda t: t.number):
        record = TrialRecord.from_trial(t)
        if t.state != optuna.trial.TrialState.COMPLETE or record.duplicate_of is not None:
            continue
        if record.plan_key is None:
            continue
        again += record.plan_key in seen
        seen.add(record.plan_key)
    return again


def examples_text(
    cfg: StudyConfig, study: optuna.Study, trials: list[optuna.trial.FrozenTrial]
) -> str:
    """``"92.0 full evaluations (36,800 examples scored)"``, with the example budget if any."""
    spent = examples_spent(trials)
    of = f"/{cfg.budget.examples:,}" if cfg.budget.examples else ""
    evals = full_evaluations(study, spent)
    head = f"{evals:.1f} full evaluations" if evals is not None else "no full evaluation"
    return f"{head} ({spent:,}{of} examples scored)"


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
        constraints=constraints_func(bool(cfg.constraints), cfg.features),
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


# --------------------------------------------------------------------------------------- join


def join(cfg: StudyConfig, config_path: str | Path, console: Console) -> LaunchResult:
    """One worker in the foreground on an existing study (``merge-search worker``)."""
    started = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prepared = prepare(cfg, config_path, storage_must_exist=True)
    study, storage = prepared.study, prepared.storage
    assert study is not None and storage is not None  # storage_must_exist
    quiet_libraries()
    device = worker_device(cfg.device, 0, local_gpu_count())
    choice = pool_placement(cfg, prepared.pool, [device])
    console.say(f"worker on {device}; {choice.reason}")
    runtime = Runtime.create(cfg, device=device, placement=choice.placement)
    console.say(
        f"first trial {time.time() - started:.1f} s after the start; "
        f"{Ready(0, runtime.load_s).describe().removeprefix('worker 0 ')}"
    )
    study.sampler = worker_sampler(cfg, study, JOIN_SEED_OFFSET, secrets.randbits(63))
    deadline = started + cfg.budget.timeout_s if cfg.budget.timeout_s else None
    with console.progress(cfg, study) as progress:
        result = run_worker(
            cfg,
            study,
            storage,
            runtime,
            deadline=deadline,
            on_trial=lambda _t: progress.refresh(),
        )
    return LaunchResult(
        0,
        f"worker: {result.n_trials} trials run here ({result.n_duplicates} reused a scored "
        f"plan); study: {examples_text(cfg, study, study.get_trials(deepcopy=False))}; "
        f"stopped on {result.stopped}",
    )


def pool_placement(
    cfg: StudyConfig, pool: CheckpointPool, devices: Sequence[str]
) -> PlacementChoice:
    """``cfg.pool`` for local workers on ``devices``, decided once so every worker agrees.

    ``auto`` applies :func:`search.engine.placement.choose_placement` to the study's method (its
    base, linear or not) with the free memory measured now: the least free of the GPUs used
    (this opens a CUDA context on each) shared by the workers on one GPU, and the host's
    available memory shared by all of them.
    """
    method = METHODS[cfg.merge.method]
    sizes = pool.sizes(needs_base=method.needs_base, linear=method.linear_kernel is not None)
    device_free = host = None
    if cfg.pool == "auto":
        gpus = sorted({d for d in devices if d.startswith("cuda")})
        frees = [device_free_bytes(torch.device(d)) for d in gpus]
        device_free = min(f for f in frees if f is not None) if gpus else None
        host = host_available_bytes()
    return choose_placement(
        cfg.pool,
        sizes,
        device_free=device_free,
        host_available=host,
        per_device=max(Counter(devices).values()),
        per_host=len(devices),
    )


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
                    cfg,
                    i,
                    threads,
                    deadline,
                    self._events,
                    self._go,
                    self._launch_token,
                    devices[i],
                    placement,
                    os.getpid(),
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


def _worker_main(
    cfg: StudyConfig,
    index: int,
    threads: int,
    deadline: float | None,
    events: Any,
    go: Any,
    launch_token: Any,
    device: str,
    placement: str | None,
    parent: int,
) -> None:
    """Entry point of one spawned worker process.

    Ctrl-C reaches the launcher only (SIGINT ignored here); the launcher stops workers with
    SIGTERM, which unwinds the trial in progress: it is failed and queued again. A worker
    whose launcher dies (even by SIGKILL) gets the same SIGTERM (:func:`die_with_parent`).
    """
    os.environ["TQDM_DISABLE"] = "1"  # before lm-eval / transformers import tqdm
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_system_exit)
    signal.signal(signal.SIGALRM, _raise_system_exit)
    sys.unraisablehook = _quiet_dropped_stop
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a worker that will not stop
    die_with_parent(parent)
    try:
        code = _worker_body(
            cfg, index, threads, deadline, events, go, launch_token, device, placement
        )
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:  # stopped (SIGTERM) while loading or waiting for the go
        code = exc.code if isinstance(exc.code, int) else 1
    # the body is done (its trial handed back or finished): a stop from now on would only
    # interrupt the interpreter's own exit (atexit, finalizers) and print a traceback there
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    sys.exit(code)


def _worker_body(
    cfg: StudyConfig,
    index: int,
    threads: int,
    deadline: float | None,
    events: Any,
    go: Any,
    launch_token: Any,
    device: str,
    placement: str | None,
) -> int:
    quiet_libraries()
    try:
        runtime = Runtime.create(cfg, threads=threads, device=device, placement=placement)
    except UserError as exc:
        events.put(Failed(index, str(exc), user_error=True))
        return 2
    except Exception:  # noqa: BLE001 - reported to the launcher, which prints it
        events.put(Failed(index, traceback.format_exc(), user_error=False))
        return 1
    events.put(Ready(index, runtime.load_s))
    while not go.wait(1.0):  # a launcher that dies meanwhile stops this (die_with_parent)
        pass
    try:
        where, limit = f"storage {redact(cfg.storage)}", cfg.workers.storage_retry_s
        storage = retrying(lambda: open_storage(cfg), where, limit)
        study = retrying(lambda: load_study(cfg, storage), where, limit)
        token = launch_token.value
        study.sampler = retrying(
            lambda: worker_sampler(cfg, study, index, token or None), where, limit
        )
        result = run_worker(cfg, study, storage, runtime, deadline=deadline)
    except UserError as exc:
        events.put(Failed(index, str(exc), user_error=True))
        return 2
    except Exception:  # noqa: BLE001
        events.put(Failed(index, traceback.format_exc(), user_error=False))
        return 1
    events.put(Done(index, result.n_trials, result.stopped))
    return 0


PARENT_POLL_S = 1.0  # how often a worker checks that its launcher is alive (without prctl)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Stop this worker (SIGTERM: its trial is failed and queued again) when ``parent`` dies.

    Linux delivers the signal itself once the parent exits (``prctl(PR_SET_PDEATHSIG)``, also
    after a SIGKILL of the parent); a daemon thread checks the parent every ``PARENT_POLL_S``
    as well (other systems, and a parent gone before the prctl took effect).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _quiet_dropped_stop(unraisable: Any) -> None:
    """Say nothing of a stop raised where Python drops exceptions (a garbage-collector
    callback, any library's): it is delivered again (:func:`_raise_system_exit`); nor, once
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


def _raise_system_exit(signum: int, frame: Any) -> None:
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
