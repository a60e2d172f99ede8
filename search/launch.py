"""``merge-search launch`` and ``merge-search worker``: create or resume a study and run workers.

``launch`` checks everything first (config, checkpoint headers, and on resume that the
checkpoints, the search space and the scoring are unchanged), starts ``--workers`` processes
(``spawn``), each building ONE resident model and ONE evaluator, creates the study only when
the first worker is ready (so a bad task or model leaves nothing behind), then shows a progress
bar fed by the storage until the budget is spent. ``worker`` joins an existing study from
another shell or host (same config, same storage URL) and runs in the foreground.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import UserError

if TYPE_CHECKING:
    import multiprocessing as mp

    import optuna

    from search.config import StudyConfig

READY_TIMEOUT_S = 1800  # a worker loading a large model from a slow disk may take this long
STOP_GRACE_S = 60  # after Ctrl-C, how long workers get to hand their trial back


# ------------------------------------------------------------------------------------ commands


def launch_command(args: argparse.Namespace) -> int:
    """``merge-search launch CONFIG [--n-trials N] [--workers N] [--storage URL]``."""
    from search.config import load_config

    if args.workers < 1:
        raise UserError(f"--workers: expected at least 1 (got {args.workers})")
    cfg = load_config(args.config, n_trials=args.n_trials, storage=args.storage)
    return launch(cfg, args.config, n_workers=args.workers)


def worker_command(args: argparse.Namespace) -> int:
    """``merge-search worker CONFIG [--storage URL] [--n-trials N]``: join an existing study."""
    import optuna

    from search.config import load_config
    from search.samplers import build_sampler
    from search.study import load_study, open_storage
    from search.worker import Runtime, run_worker

    started = time.time()
    cfg = load_config(args.config, n_trials=args.n_trials, storage=args.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(cfg)
    study = load_study(cfg, storage)
    _check_against(study, cfg, args.config)
    _quiet_libraries()
    runtime = Runtime.create(cfg)
    study.sampler = build_sampler(
        cfg.sampler,
        constrained=bool(cfg.constraints),
        worker=1000 + os.getpid() % 100_000,
        salt=len(study.get_trials(deepcopy=False)),
    )
    deadline = started + cfg.budget.timeout_s if cfg.budget.timeout_s else None
    with _progress(cfg, study) as progress:
        result = run_worker(
            cfg,
            study,
            storage,
            runtime,
            n_trials=cfg.budget.n_trials,
            deadline=deadline,
            on_trial=lambda _t: progress.refresh(),
        )
    print(
        f"worker: {result.n_trials} trials run here ({result.n_duplicates} reused a scored plan); "
        f"stopped on {result.stopped}",
        file=sys.stderr,
    )
    return 0


# ------------------------------------------------------------------------------------ launch


def launch(cfg: StudyConfig, config_path: str | Path, *, n_workers: int = 1) -> int:
    """Create or resume the study and run ``n_workers`` worker processes to the budget.

    Returns:
        0 when the budget (or the timeout) was reached, 1 when workers failed before that.
    """
    import optuna

    from search.pool import CheckpointPool
    from search.space import SearchSpace
    from search.study import (
        check_resume,
        create_or_resume,
        load_study,
        open_storage,
        signature,
        study_exists,
        trial_counts,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    space = SearchSpace.build(cfg, pool.names)
    sig = signature(cfg, space, pool.fingerprint())
    if study_exists(cfg):
        existing = load_study(cfg, open_storage(cfg))
        check_resume(existing, cfg, sig, config_path)
        counts = trial_counts(existing)
        if counts.get("complete", 0) + counts.get(
            "pruned", 0
        ) >= cfg.budget.n_trials and not counts.get("running"):
            print(
                f"study {cfg.name!r} already has its {cfg.budget.n_trials} trials; "
                "raise --n-trials to run more",
                file=sys.stderr,
            )
            return 0
    deadline = started + cfg.budget.timeout_s if cfg.budget.timeout_s else None

    study = None
    print(
        f"starting {n_workers} worker(s): each loads the model and the evaluator once",
        file=sys.stderr,
    )
    try:
        with _WorkerGroup(cfg, n_workers, deadline) as group:
            group.wait_first_ready()
            storage = open_storage(cfg, create=True)
            study, created = create_or_resume(cfg, storage, space, pool.fingerprint(), config_path)
            verb = "created" if created else "resumed"
            print(
                f"study {cfg.name!r} {verb} in {_shown(cfg.storage)}: {n_workers} worker(s), "
                f"budget {cfg.budget.n_trials} trials",
                file=sys.stderr,
            )
            group.go()
            with _progress(cfg, study) as progress:
                while group.alive():
                    for line in group.messages():
                        progress.write(line)
                    progress.refresh()
                    time.sleep(1.0)
                for line in group.messages():
                    progress.write(line)
                progress.refresh()
    except KeyboardInterrupt:
        if study is not None:
            from search.study import trial_counts

            counts = trial_counts(study)
            done = counts.get("complete", 0) + counts.get("pruned", 0)
            print(
                f"study {cfg.name!r}: stopped at {done}/{cfg.budget.n_trials} finished trials; "
                "run the same command to continue",
                file=sys.stderr,
            )
        raise
    return _summary(cfg, study, group, config_path, time.time() - started)


def _summary(
    cfg: StudyConfig,
    study: optuna.Study,
    group: _WorkerGroup,
    config_path: str | Path,
    seconds: float,
) -> int:
    from search.study import trial_counts

    counts = trial_counts(study)
    finished = counts.get("complete", 0) + counts.get("pruned", 0)
    everything = study.get_trials(deepcopy=False)
    dup = sum(1 for t in everything if "duplicate_of" in t.user_attrs)
    retried = {t.system_attrs.get("failed_trial") for t in everything} - {None}
    line = (
        f"study {cfg.name!r}: {finished}/{cfg.budget.n_trials} trials finished "
        f"({dup} reused a scored plan, {len(retried)} retried after a failure or interruption) "
        f"in {seconds:.0f} s"
    )
    if finished >= cfg.budget.n_trials:
        print(f"{line}; next: merge-search pareto {config_path}", file=sys.stderr)
        return 0
    if group.timed_out:
        print(
            f"{line}; stopped by budget.timeout_s; run the same command to continue",
            file=sys.stderr,
        )
        return 0
    if group.user_errors:
        raise UserError(group.user_errors[0])
    print(f"{line}; workers failed (see above); run the same command to continue", file=sys.stderr)
    return 1


def _check_against(study: optuna.Study, cfg: StudyConfig, config_path: str | Path) -> None:
    """A joining worker refuses a study built from other checkpoints or another space."""
    from search.pool import CheckpointPool
    from search.space import SearchSpace
    from search.study import check_resume, signature

    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    check_resume(
        study,
        cfg,
        signature(cfg, SearchSpace.build(cfg, pool.names), pool.fingerprint()),
        config_path,
    )


def _shown(url: str) -> str:
    from search.study import redact

    return redact(url)


# ------------------------------------------------------------------------- worker processes


class _WorkerGroup:
    """N spawned worker processes, a message queue from them, and a "go" event to them."""

    def __init__(self, cfg: StudyConfig, n_workers: int, deadline: float | None) -> None:
        import multiprocessing

        self.cfg = cfg
        self.deadline = deadline
        ctx = multiprocessing.get_context("spawn")
        self._events: mp.Queue = ctx.Queue()
        self._go = ctx.Event()
        threads = cfg.workers.threads or max(1, (os.cpu_count() or 1) // n_workers)
        self._procs = [
            ctx.Process(
                target=_worker_main,
                name=f"merge-search-worker-{i}",
                daemon=False,
                args=(cfg, i, threads, deadline, self._events, self._go),
            )
            for i in range(n_workers)
        ]
        self.user_errors: list[str] = []
        self.timed_out = False
        self._ready = 0
        self._reported: set[int] = set()

    def __enter__(self) -> _WorkerGroup:  # noqa: PYI034
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

    def wait_first_ready(self) -> None:
        """Block until one worker has its model and evaluator; raise its error if all fail first."""
        end = time.time() + READY_TIMEOUT_S
        failures: list[str] = []
        while self._ready == 0:
            try:
                event = self._events.get(timeout=1.0)
            except queue.Empty:
                if not self.alive() and self._events.empty():
                    break
                if time.time() > end:
                    raise UserError(f"workers: none was ready after {READY_TIMEOUT_S} s") from None
                continue
            kind = event[0]
            if kind == "ready":
                self._ready += 1
            elif kind in ("error", "crash"):
                failures.append(event[2])
                if kind == "error":  # the same bad input stops every worker: report it now
                    raise UserError(event[2])
            if len(failures) == len(self._procs):
                break
        if self._ready == 0:
            detail = failures[0] if failures else "exited before reporting (see above)"
            raise RuntimeError(f"no worker could start: {detail}")

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
            kind, index = event[0], event[1]
            if kind == "error":
                self.user_errors.append(event[2])
                yield f"worker {index}: error: {event[2]}"
            elif kind == "crash":
                yield f"worker {index} failed:\n{event[2].rstrip()}"
            elif kind == "done" and event[3] == "timeout":
                self.timed_out = True
        for index, p in enumerate(self._procs):
            if p.exitcode is not None and p.exitcode < 0 and index not in self._reported:
                self._reported.add(index)
                yield (
                    f"worker {index} was killed by signal {-p.exitcode}; "
                    "its trial is retried once its heartbeat goes stale"
                )


def _worker_main(
    cfg: StudyConfig, index: int, threads: int, deadline: float | None, events: mp.Queue, go: Any
) -> None:
    """Entry point of one spawned worker process.

    Ctrl-C reaches the launcher only (SIGINT ignored here); the launcher stops workers with
    SIGTERM, which unwinds the trial in progress: it is failed and queued again.
    """
    os.environ["TQDM_DISABLE"] = "1"  # before lm-eval / transformers import tqdm
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        code = _worker_body(cfg, index, threads, deadline, events, go)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _worker_body(
    cfg: StudyConfig, index: int, threads: int, deadline: float | None, events: mp.Queue, go: Any
) -> int:
    from search.worker import Runtime, run_worker

    _quiet_libraries()
    try:
        _set_threads(cfg, threads)
        runtime = Runtime.create(cfg)
    except UserError as exc:
        events.put(("error", index, str(exc)))
        return 2
    except Exception:  # noqa: BLE001 - reported to the launcher, which prints it
        events.put(("crash", index, traceback.format_exc()))
        return 1
    events.put(("ready", index))
    parent = os.getppid()
    while not go.wait(1.0):
        if os.getppid() != parent:  # the launcher is gone
            return 1
    try:
        from search.samplers import build_sampler
        from search.study import load_study, open_storage

        storage = open_storage(cfg)
        study = load_study(cfg, storage)
        study.sampler = build_sampler(
            cfg.sampler,
            constrained=bool(cfg.constraints),
            worker=index,
            salt=len(study.get_trials(deepcopy=False)),
        )
        result = run_worker(
            cfg, study, storage, runtime, n_trials=cfg.budget.n_trials, deadline=deadline
        )
    except UserError as exc:
        events.put(("error", index, str(exc)))
        return 2
    except Exception:  # noqa: BLE001
        events.put(("crash", index, traceback.format_exc()))
        return 1
    events.put(("done", index, result.n_trials, result.stopped))
    return 0


def _set_threads(cfg: StudyConfig, threads: int) -> None:
    """Torch intra-op threads of this worker on CPU (0: leave torch's default)."""
    if threads and cfg.resolved_device() == "cpu":
        import torch

        torch.set_num_threads(threads)


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _quiet_libraries() -> None:
    """Workers print nothing per trial: the launcher's progress bar speaks for them."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("lm-eval", "lm_eval", "transformers", "datasets", "evaluate", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - lm-eval depends on datasets
        pass


# ------------------------------------------------------------------------------------ progress


class _Progress:
    """A tqdm bar of finished trials, with the best value of each objective so far."""

    def __init__(self, cfg: StudyConfig, study: optuna.Study) -> None:
        from tqdm import tqdm

        self.cfg = cfg
        self.study = study
        self.bar = tqdm(
            total=cfg.budget.n_trials,
            desc=cfg.name,
            unit="trial",
            dynamic_ncols=True,
            file=sys.stderr,
            disable=False,
        )
        self.refresh()

    def refresh(self) -> None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        complete = [t for t in done if t.state == TrialState.COMPLETE and t.values]
        parts = []
        for i, obj in enumerate(self.cfg.objectives):
            vals = [t.values[i] for t in complete]
            if vals:
                best = max(vals) if obj.direction == "maximize" else min(vals)
                parts.append(f"{obj.name}={best:.3g}")
        parts.append(f"running={running}")
        self.bar.n = min(len(done), self.cfg.budget.n_trials)
        self.bar.set_postfix_str(" ".join(parts), refresh=False)
        self.bar.refresh()

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def _progress(cfg: StudyConfig, study: optuna.Study) -> Iterator[_Progress]:
    progress = _Progress(cfg, study)
    try:
        yield progress
    finally:
        progress.close()
