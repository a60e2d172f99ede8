"""Launching a study: prepare it, run worker processes to the budget, summarize.

:func:`launch` reads top to bottom:

1. **prepare** (:func:`prepare`): the config is already validated; check the tasks (names,
   group members, data in the local caches, consent to run code), read the checkpoints'
   safetensors headers (and a Fisher method's calibration data), build the search space and
   the study's signature, open the storage once (when the study can already exist) and, on
   resume, check that the checkpoints, the search space and the scoring are unchanged;
2. **precompute** (:func:`precompute`): what no worker should do on its own, in one scratch
   runtime released before the workers start: the checkpoints' Fishers (cached on disk,
   :mod:`~search.study.fisher_cache`) and, for a new study, the Frank-Wolfe paths
   (:mod:`~search.study.fw`) whose endpoints become seed trials;
3. **run workers**: ``n_workers`` processes (``spawn``) each build ONE resident model and ONE
   evaluator, worker ``i`` on GPU ``i mod G`` with ``device: auto``/``cuda`` on a host with G GPUs
   (:func:`search.engine.device.worker_device`), every worker with the same pool placement
   (:func:`pool_placement`, decided here once); the study is created only once the first worker
   is ready, so a bad task or model leaves nothing behind; the launcher says how long that took
   (seconds to the first trial), then shows a progress bar fed by the storage;
4. **summary**: trials finished, reused and retried, examples scored (as full-evaluation
   equivalents), and what to run next.

:func:`join` is ``merge-search worker``: one worker in the foreground on an existing study
(another shell or host, same config and storage URL). Workers report to the launcher with the
named events below.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from search.study.fisher_cache import Calibration, calibration, load_fishers
from search.study.fisher_cache import cache_dir as fisher_cache_dir
from search.study.fw import Proposals, propose
from search.study.progress import progress_bar
from search.study.records import STOPPED_ATTR
from search.study.samplers import build_sampler, check_options
from search.study.space import SearchSpace
from search.study.storage import (
    EVALUATION_SIZE_ATTR,
    Budget,
    check_resume,
    create_or_resume,
    examples_spent,
    finished,
    full_evaluations,
    load_study,
    open_storage,
    redact,
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
    calibration: Calibration | None = None  # methods that read Fishers

    @property
    def fisher(self) -> dict[str, Any] | None:
        """The calibration description in the study's signature (``None`` without Fishers)."""
        return self.calibration.describe() if self.calibration is not None else None

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
    return Budget(
        cfg.budget.n_trials, cfg.budget.examples, int(study.user_attrs.get(EVALUATION_SIZE_ATTR, 0))
    )


def budget_text(cfg: StudyConfig) -> str:
    """``"100 trials"`` or ``"100 trials or 40,000 examples"``."""
    examples = f" or {cfg.budget.examples:,} examples" if cfg.budget.examples else ""
    return f"{cfg.budget.n_trials} trials{examples}"


def prepare(cfg: StudyConfig, config_path: str | Path) -> Prepared:
    """Sampler options → tasks → checkpoint headers → calibration data → space → signature →
    storage (opened once) → resume checks."""
    check_options(cfg.sampler, constrained=bool(cfg.constraints), where=config_path)
    check_scoring(cfg, config_path)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    data = calibration(cfg) if METHODS[cfg.merge.method].needs_fisher else None
    space = SearchSpace.build(cfg, pool.names)
    sig = signature(cfg, space, pool.fingerprint(), data.describe() if data else None)
    db = sqlite_path(cfg.storage)
    storage = open_storage(cfg) if db is None or db.is_file() else None
    study = None
    if storage is not None and cfg.name in optuna.get_all_study_names(storage):
        study = load_study(cfg, storage)
        check_resume(study, cfg, sig, config_path)
    return Prepared(cfg, config_path, pool, space, sig, storage, study, data)


def precompute(prepared: Prepared) -> Proposals | None:
    """Fill the Fisher cache and, for a new study, run the Frank-Wolfe paths.

    Both need the pool's tensors, a model and backward passes: done once here in a scratch
    pool and model, released before any worker starts (workers then read the Fishers from the
    cache). Prints what it did. Returns the Frank-Wolfe proposals, or ``None``.
    """
    cfg = prepared.cfg
    wants_fw = cfg.uses_frank_wolfe and prepared.study is None
    if prepared.calibration is None and not wants_fw:
        return None
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    pool.load(base=METHODS[cfg.merge.method].needs_base)
    model, tokenizer = pool.load_model()
    proposals = None
    if prepared.calibration is not None:
        done = load_fishers(pool, prepared.calibration, fisher_cache_dir(cfg), model, tokenizer)
        say(
            f"Fishers of {len(pool.names)} checkpoints on {len(prepared.calibration.examples)} "
            f"examples ({prepared.calibration.label}): {len(done.computed)} computed "
            f"({done.backward_passes} backward passes), {len(pool.names) - len(done.computed)} "
            f"from the cache {fisher_cache_dir(cfg)}, in {done.seconds:.1f} s"
        )
    if wants_fw:
        proposals = propose(cfg, prepared.space, pool, model, tokenizer)
        say(proposals.summary())
    del model, tokenizer, pool
    gc.collect()
    return proposals


def check_scoring(cfg: StudyConfig, config_path: str | Path) -> None:
    """The objectives' and held-out tasks' checks that need no model (names, group members,
    consent to run code, data in the local caches; with ``eval.backend: vllm`` that vLLM is
    installed, supports the model and accepts ``eval.vllm``), before any worker starts."""
    from evaluators import check_objectives

    spec = cfg.eval_spec()
    reference = cfg.base_model or cfg.checkpoints[0]  # the folder workers load the model from
    try:
        check_objectives(cfg.objectives, spec, reference, cfg.dtype)
        if cfg.eval.heldout:
            check_objectives(cfg.heldout_objectives(), spec)
    except UserError as exc:
        raise UserError(f"{config_path}: {exc}") from None


# ------------------------------------------------------------------------------------- launch


def launch(cfg: StudyConfig, config_path: str | Path, *, n_workers: int = 1) -> int:
    """Create or resume the study and run ``n_workers`` worker processes to the budget.

    Returns:
        0 when the budget (or the timeout) was reached, 1 when workers failed before that.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    prepared = prepare(cfg, config_path)
    if prepared.budget_spent():
        raise_it = "--n-trials" if not cfg.budget.examples else "--n-trials or budget.examples"
        say(
            f"study {cfg.name!r} has already spent its budget of {budget_text(cfg)}; "
            f"raise {raise_it} to run more"
        )
        return 0
    proposals = precompute(prepared)
    deadline = started + cfg.budget.timeout_s if cfg.budget.timeout_s else None
    threads = cfg.workers.threads or max(1, (os.cpu_count() or 1) // n_workers)
    gpus = local_gpu_count()
    devices = [worker_device(cfg.device, i, gpus) for i in range(n_workers)]
    choice = pool_placement(cfg, prepared.pool, devices)
    where = devices[0] if len(set(devices)) == 1 else ", ".join(devices)
    say(f"starting {n_workers} worker(s) on {where}: each loads the model and the evaluator once")
    say(choice.reason)
    study = None
    try:
        with (
            ctrl_c() as pressed,
            WorkerGroup(cfg, n_workers, threads, deadline, devices, choice.placement) as group,
        ):
            first = group.wait_first_ready(pressed)
            storage = prepared.storage or open_storage(cfg, create=True)
            study, created = create_or_resume(
                cfg,
                storage,
                prepared.space,
                prepared.pool.fingerprint(),
                config_path,
                fisher=prepared.fisher,
                proposals=proposals,
            )
            say(
                f"study {cfg.name!r} {'created' if created else 'resumed'} in "
                f"{redact(cfg.storage)}: {n_workers} worker(s), budget {budget_text(cfg)}"
            )
            group.go()
            say(f"first trial {time.time() - started:.1f} s after the start; {first.describe()}")
            with progress_bar(cfg, study) as progress:
                while group.alive():
                    for line in group.messages():
                        progress.write(line)
                    progress.refresh()
                    time.sleep(1.0)
                    if pressed.is_set():  # a Ctrl-C whose KeyboardInterrupt was dropped
                        raise KeyboardInterrupt
                for line in group.messages():
                    progress.write(line)
                progress.refresh()
    except KeyboardInterrupt:
        if study is not None:
            say(
                f"study {cfg.name!r}: stopped at {finished(trial_counts(study))}/"
                f"{cfg.budget.n_trials} finished trials; run the same command to continue"
            )
        raise
    return summary(cfg, study, group, config_path, time.time() - started)


def summary(
    cfg: StudyConfig,
    study: optuna.Study,
    group: WorkerGroup,
    config_path: str | Path,
    seconds: float,
) -> int:
    """Print what the launch did; the exit status (a worker's bad input re-raised)."""
    everything = study.get_trials(deepcopy=False)
    done = finished(trial_counts(study))
    dup = sum(1 for t in everything if "duplicate_of" in t.user_attrs)
    retried = {t.system_attrs.get("failed_trial") for t in everything} - {None}
    stopped = sum(1 for t in everything if STOPPED_ATTR in t.user_attrs)
    raced = f", {stopped} stopped early by staged scoring" if cfg.racing is not None else ""
    line = (
        f"study {cfg.name!r}: {done}/{cfg.budget.n_trials} trials finished "
        f"({dup} reused a scored plan, {len(retried)} retried after a failure or interruption"
        f"{raced}), {examples_text(cfg, study, everything)} in {seconds:.0f} s"
    )
    if not budget_of(cfg, study).allows_another(everything):
        say(f"{line}; next: merge-search pareto {config_path}")
        return 0
    if group.timed_out:
        say(f"{line}; stopped by budget.timeout_s; run the same command to continue")
        return 0
    if group.user_errors:
        raise UserError(group.user_errors[0])
    say(f"{line}; workers failed (see above); run the same command to continue")
    return 1


def examples_text(
    cfg: StudyConfig, study: optuna.Study, trials: list[optuna.trial.FrozenTrial]
) -> str:
    """``"92.0 full evaluations (36,800 examples scored)"``, with the example budget if any."""
    spent = examples_spent(trials)
    of = f"/{cfg.budget.examples:,}" if cfg.budget.examples else ""
    evals = full_evaluations(study, spent)
    head = f"{evals:.1f} full evaluations" if evals is not None else "no full evaluation"
    return f"{head} ({spent:,}{of} examples scored)"


# --------------------------------------------------------------------------------------- join


def join(cfg: StudyConfig, config_path: str | Path) -> int:
    """One worker in the foreground on an existing study (``merge-search worker``)."""
    started = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_options(cfg.sampler, constrained=bool(cfg.constraints), where=config_path)
    check_scoring(cfg, config_path)
    storage = open_storage(cfg)
    study = load_study(cfg, storage)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    data = calibration(cfg) if METHODS[cfg.merge.method].needs_fisher else None
    check_resume(
        study,
        cfg,
        signature(
            cfg,
            SearchSpace.build(cfg, pool.names),
            pool.fingerprint(),
            data.describe() if data else None,
        ),
        config_path,
    )
    quiet_libraries()
    device = worker_device(cfg.device, 0, local_gpu_count())
    choice = pool_placement(cfg, pool, [device])
    say(f"worker on {device}; {choice.reason}")
    runtime = Runtime.create(cfg, device=device, placement=choice.placement)
    say(
        f"first trial {time.time() - started:.1f} s after the start; "
        f"{Ready(0, runtime.load_s).describe().removeprefix('worker 0 ')}"
    )
    study.sampler = build_sampler(
        cfg.sampler,
        constrained=bool(cfg.constraints),
        raced=cfg.racing is not None,
        worker=JOIN_SEED_OFFSET + os.getpid() % 100_000,
        salt=len(study.get_trials(deepcopy=False)),
    )
    deadline = started + cfg.budget.timeout_s if cfg.budget.timeout_s else None
    with progress_bar(cfg, study) as progress:
        result = run_worker(
            cfg,
            study,
            storage,
            runtime,
            n_trials=cfg.budget.n_trials,
            deadline=deadline,
            on_trial=lambda _t: progress.refresh(),
        )
    say(
        f"worker: {result.n_trials} trials run here ({result.n_duplicates} reused a scored "
        f"plan); study: {examples_text(cfg, study, study.get_trials(deepcopy=False))}; "
        f"stopped on {result.stopped}"
    )
    return 0


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
    """Ctrl-C that cannot be lost: the handler sets the event and raises KeyboardInterrupt.

    Python runs a signal handler at the next bytecode, which may be inside a garbage-collector
    weakref callback, where the KeyboardInterrupt is printed and dropped; the launcher's loops
    check the event, so the stop still happens within a second.
    """
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return

    def handler(signum: int, frame: Any) -> None:
        pressed.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def say(line: str) -> None:
    print(line, file=sys.stderr)


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
        devices = list(devices or [cfg.device] * n_workers)
        self._procs = [
            ctx.Process(
                target=_worker_main,
                name=f"merge-search-worker-{i}",
                daemon=False,
                args=(cfg, i, threads, deadline, self._events, self._go, devices[i], placement),
            )
            for i in range(n_workers)
        ]
        self.user_errors: list[str] = []
        self.timed_out = False
        self._ready = 0
        self._reported: set[int] = set()

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
            if p.is_alive():
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

    def go(self) -> None:
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
                yield (
                    f"worker {index} was killed by signal {-p.exitcode}; "
                    "its trial is retried once its heartbeat goes stale"
                )


def _worker_main(
    cfg: StudyConfig,
    index: int,
    threads: int,
    deadline: float | None,
    events: Any,
    go: Any,
    device: str,
    placement: str | None,
) -> None:
    """Entry point of one spawned worker process.

    Ctrl-C reaches the launcher only (SIGINT ignored here); the launcher stops workers with
    SIGTERM, which unwinds the trial in progress: it is failed and queued again.
    """
    os.environ["TQDM_DISABLE"] = "1"  # before lm-eval / transformers import tqdm
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_system_exit)
    signal.signal(signal.SIGALRM, _raise_system_exit)
    try:
        code = _worker_body(cfg, index, threads, deadline, events, go, device, placement)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _worker_body(
    cfg: StudyConfig,
    index: int,
    threads: int,
    deadline: float | None,
    events: Any,
    go: Any,
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
    parent = os.getppid()
    while not go.wait(1.0):
        if os.getppid() != parent:  # the launcher is gone
            return 1
    try:
        storage = open_storage(cfg)
        study = load_study(cfg, storage)
        study.sampler = build_sampler(
            cfg.sampler,
            constrained=bool(cfg.constraints),
            raced=cfg.racing is not None,
            worker=index,
            salt=len(study.get_trials(deepcopy=False)),
        )
        result = run_worker(
            cfg, study, storage, runtime, n_trials=cfg.budget.n_trials, deadline=deadline
        )
    except UserError as exc:
        events.put(Failed(index, str(exc), user_error=True))
        return 2
    except Exception:  # noqa: BLE001
        events.put(Failed(index, traceback.format_exc(), user_error=False))
        return 1
    events.put(Done(index, result.n_trials, result.stopped))
    return 0


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
