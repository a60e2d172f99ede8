"""Launching a study: prepare it, run worker processes to the budget, summarize.

:func:`launch` reads top to bottom:

1. **prepare** (:func:`prepare`): the config is already validated; check the tasks (names,
   group members, data in the local caches, consent to run code), read the checkpoints'
   safetensors headers, build the search space and the study's signature (the strategies read
   their data here), open the storage once (when the study can already exist) and, on resume,
   check that the checkpoints, the search space and the scoring are unchanged;
2. **precompute** (:func:`precompute`): what no worker should do on its own (the strategies'
   precompute hook: e.g. a cache of per-tensor extras, seed trials to propose), in one scratch
   pool and model released before the workers start;
3. **run workers** (:mod:`search.study.processes` spawns, hears and stops them): ``n_workers``
   processes each build ONE resident model and ONE evaluator, worker ``i`` on GPU ``i mod G``
   (:func:`search.engine.device.worker_device`), all with one pool placement
   (:func:`pool_placement`); the study is created only once the first worker is ready, so a bad
   task or model leaves nothing behind; then the :class:`Console` the command gives shows the
   seconds to the first trial and the study's progress;
4. **summary**: trials finished, reused and retried, examples scored (as full-evaluation
   equivalents), and what to run next.

:func:`join` is ``merge-search worker``: one worker in the foreground on an existing study
(another shell or host, same config and storage URL).
"""

from __future__ import annotations

import gc
import os
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import optuna

from search.engine.device import local_gpu_count, worker_device
from search.engine.model import load_model
from search.engine.placement import PlacementChoice, place_workers
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.strategies import get_method
from search.study.processes import Ready, WorkerGroup, ctrl_c, worker_sampler
from search.study.record import TrialRecord
from search.study.samplers import check_options
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
    open_storage,
    redact,
    retrying,
    signature,
    sqlite_path,
    trial_counts,
)
from search.study.strategy import Scratch, offered
from search.study.worker import Runtime, quiet_libraries, run_worker

if TYPE_CHECKING:
    from search.study.config import StudyConfig

JOIN_SEED_OFFSET = 1000  # a joining worker's sampler seed index, apart from launch's 0..N-1


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
    sig = signature(cfg, space, pool.identity.fingerprint())  # strategies read their data here
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
    """What no worker should do on its own: each strategy's :meth:`~search.study.strategy.
    Strategy.precompute` (a cache of per-tensor extras, a new study's seed trials).

    They need the pool's tensors and a model: loaded once here in a scratch pool and model,
    released before any worker starts.
    """
    cfg = prepared.cfg
    new_study = prepared.study is None
    busy = [s for s in cfg.strategies if s.needs_precompute(new_study)]
    if not busy:
        return
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype)
    pool.load(base=get_method(cfg.merge.method).needs_base)
    model, tokenizer = load_model(pool)
    scratch = Scratch(pool, model, tokenizer, prepared.space)
    for strategy in busy:
        for line in strategy.precompute(scratch, new_study):
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
                cfg, storage, prepared.space, prepared.pool.identity.fingerprint(), config_path
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
    group: WorkerGroup, study: optuna.Study, storage: optuna.storages.RDBStorage, progress: Any
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
    summaries = offered(cfg.strategies, "summary")
    extra = "".join(f", {text}" for summary in summaries if (text := summary(records)))
    if failed := [r for r in records if r.failed]:  # e.g. a merge that held NaN: not retried
        extra += f", {len(failed)} failed (trial {failed[0].number}: {failed[0].failed})"
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
        complete = t.state == optuna.trial.TrialState.COMPLETE
        if not complete or record.duplicate_of is not None or record.plan_key is None:
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
        hooks = {"on_trial": lambda _: progress.refresh(), "on_note": progress.write}
        result = run_worker(cfg, study, storage, runtime, deadline=deadline, **hooks)
    return LaunchResult(
        0,
        f"worker: {result.n_trials} trials run here ({result.n_duplicates} reused a scored "
        f"plan); study: {examples_text(cfg, study, study.get_trials(deepcopy=False))}; "
        f"stopped on {result.stopped}",
    )


def pool_placement(
    cfg: StudyConfig, pool: CheckpointPool, devices: Sequence[str]
) -> PlacementChoice:
    """``cfg.pool`` for local workers on ``devices``, decided once so every worker agrees, less
    the GPU share each worker's vLLM engine will take (``place_workers``)."""
    method = get_method(cfg.merge.method)
    sizes = pool.sizes(needs_base=method.needs_base, linear=method.linear_coefficients is not None)
    return place_workers(cfg.pool, sizes, devices, reserved_share=cfg.eval.device_share)
