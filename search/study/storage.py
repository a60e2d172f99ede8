"""Storage and study bookkeeping: open the RDB storage, create or resume a study, claim trials.

A study lives in an Optuna RDB storage (SQLite for one host, PostgreSQL for several). Workers
write a heartbeat while they run a trial; a trial whose heartbeat stops (the worker died) is
failed by the next worker that looks and re-queued by ``RetryHeartbeatStaleTrialCallback``.

The budget is exact: a worker claims a trial only under a lock held through the storage
(a PostgreSQL advisory lock, or an ``flock`` on ``<sqlite file>.lock``) after counting the
trials that are finished or running, so concurrent workers never start more than
``budget.n_trials`` trials in all, and a resumed study continues its count. The example budget
(``budget.examples``) is counted the same way, from what the trials themselves recorded
(``examples_scored``), so it too survives a resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from search.errors import UserError

if TYPE_CHECKING:
    import optuna

    from search.study.config import StudyConfig, WorkersConfig
    from search.study.fw import Proposals
    from search.study.space import SearchSpace

# Study user attrs (the contract with search.report.view) and the resume signature.
CONFIG_ATTR = "config"
FINGERPRINT_ATTR = "fingerprint"
SPACE_ATTR = "search_space"
SCORING_ATTR = "scoring"
FW_ATTR = "fw"  # the Frank-Wolfe paths and their cost (search.study.fw)
# Study user attr: examples one full evaluation scores (set by the workers, read by the launcher).
EVALUATION_SIZE_ATTR = "examples_per_evaluation"
# Trial user attr: examples this trial scored (0 when it reused a scored plan or was pruned).
EXAMPLES_SCORED = "examples_scored"


# ------------------------------------------------------------------------------------ storage


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Hide Optuna's "experimental feature" warnings for the APIs this module relies on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental.*")
        yield


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URL (relative to the working directory)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///") :])


def redact(url: str) -> str:
    """The URL with any password hidden, for messages."""

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: nothing to hide
        return url


def open_storage(
    cfg: StudyConfig, url: str | None = None, *, create: bool = False
) -> optuna.storages.RDBStorage:
    """The study's RDB storage with heartbeats and retry of a dead worker's trial.

    Args:
        cfg: the study config (``workers`` section: heartbeat, grace period, retries).
        url: overrides ``cfg.storage``.
        create: allow creating a missing SQLite file (``launch`` only); otherwise a missing
            file is a ``UserError`` and nothing is written.
    """
    return connect(url or cfg.storage, cfg.workers, create=create)


def connect(
    url: str, workers: WorkersConfig | None = None, *, create: bool = False
) -> optuna.storages.RDBStorage:
    """Open an Optuna RDB storage by its plain URL (``sqlite:///…``, ``postgresql://…``).

    ``postgresql://`` is what every Optuna tool expects; SQLAlchemy maps it to psycopg 3, which
    merge-search depends on. With ``workers`` the storage writes heartbeats and retries the
    trial of a worker that died (at most ``workers.max_retry`` times); without, it is a plain
    reader (the dashboard). A missing SQLite file is a ``UserError`` unless ``create``.
    """

    db = sqlite_path(url)
    engine_kwargs: dict[str, Any] = {}
    if db is not None:
        if not db.is_file():
            if not create:
                raise UserError(
                    f"storage: {db} does not exist; create the study with `merge-search launch`"
                )
            db.parent.mkdir(parents=True, exist_ok=True)
        # several worker processes share the file: wait for its write lock instead of failing
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        with quiet_experimental():
            liveness: dict[str, Any] = {}
            if workers is not None:
                liveness = {
                    "heartbeat_interval": workers.heartbeat_s,
                    "grace_period": workers.grace_s or 2 * workers.heartbeat_s,
                    "heartbeat_stale_trial_callback": (
                        optuna.storages.RetryHeartbeatStaleTrialCallback(
                            max_retry=workers.max_retry
                        )
                    ),
                }
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **liveness)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"storage: cannot open {redact(url)}: {first}") from None


def study_exists(cfg: StudyConfig, url: str | None = None) -> bool:
    """Whether the storage holds a study of this name (a missing SQLite file is not created)."""

    url = url or cfg.storage
    db = sqlite_path(url)
    if db is not None and not db.is_file():
        return False
    return cfg.name in optuna.get_all_study_names(open_storage(cfg, url))


def load_study(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """The existing study named ``cfg.name`` (``UserError`` naming the storage if missing)."""

    try:
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler)
    except KeyError:
        url = getattr(storage, "url", cfg.storage)
        raise UserError(
            f"study {cfg.name!r} not found in {redact(url)}; "
            "create it with `merge-search launch CONFIG`"
        ) from None


# ------------------------------------------------------------------------- create or resume


def signature(
    cfg: StudyConfig,
    space: SearchSpace,
    fingerprint: Mapping[str, Any],
    fisher: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a resumed study must keep: the checkpoints, the search space, how trials are scored.

    ``fisher``: for methods that read Fishers, their calibration data
    (:meth:`search.study.fisher_cache.Calibration.describe`: file or tasks, N, digest), kept
    with the search space: other Fishers are another merge.
    """
    scoring = {
        "objectives": [_objective_signature(o) for o in cfg.objectives],
        "limit": cfg.eval.limit,
        "num_fewshot": cfg.eval.num_fewshot,
        "seed": cfg.eval.seed,
    }
    # Settings added later join only when set, so that studies created before them resume.
    for name in ("apply_chat_template", "system_instruction", "fewshot_as_multiturn", "max_length"):
        value = getattr(cfg.eval, name)
        if value != type(cfg.eval).model_fields[name].default:
            scoring[name] = value
    described = space.describe()
    if fisher is not None:
        described = {**described, "fisher": dict(fisher)}
    return {
        FINGERPRINT_ATTR: dict(fingerprint),
        SPACE_ATTR: described,
        SCORING_ATTR: scoring,
    }


def _objective_signature(objective: Any) -> dict[str, Any]:
    """An objective as the signature keeps it; a task's ``gen_kwargs`` only when set."""
    data = objective.model_dump(mode="json")
    for task in data.get("tasks", []):
        if task.get("gen_kwargs") is None:
            task.pop("gen_kwargs", None)
    return data


def check_resume(
    study: optuna.Study, cfg: StudyConfig, sig: Mapping[str, Any], config_path: str | Path
) -> None:
    """Refuse to resume when the checkpoints, the search space or the scoring changed."""
    attrs = study.user_attrs
    fix = f"use a new study name, or restore the previous setting to resume study {cfg.name!r}"
    check_fingerprint(study, sig[FINGERPRINT_ATTR], config_path, fix, required=True)
    old_space, new_space = attrs.get(SPACE_ATTR), sig[SPACE_ATTR]
    if old_space != new_space:
        where = _first_difference(old_space, new_space)
        raise UserError(f"{config_path}: merge: the search space changed ({where}); {fix}")
    old_scoring, new_scoring = attrs.get(SCORING_ATTR), sig[SCORING_ATTR]
    if old_scoring != new_scoring:
        where = _first_difference(old_scoring, new_scoring)
        raise UserError(
            f"{config_path}: objectives/eval: how trials are scored changed ({where}); {fix}"
        )


def check_fingerprint(
    study: optuna.Study,
    fingerprint: Mapping[str, Any],
    config_path: str | Path,
    consequence: str,
    *,
    required: bool = False,
) -> None:
    """Refuse when the checkpoints' files differ from those the study recorded.

    Args:
        fingerprint: ``CheckpointPool.fingerprint()`` of the files as they are now.
        consequence: what the user should know or do, appended to the one-line error.
        required: a study that recorded no fingerprint is refused too (resume); otherwise it
            passes (a study made by other tools).
    """
    old = study.user_attrs.get(FINGERPRINT_ATTR)
    if old is None and not required:
        return
    new = json.loads(json.dumps(fingerprint))  # as the storage keeps it: lists, not tuples
    new = _as_recorded(old, new)
    if old != new:
        where = _first_difference(old, new)
        raise UserError(
            f"{config_path}: checkpoints: the files changed since the study was created "
            f"({where or 'fingerprint differs'}); {consequence}"
        )


def _as_recorded(old: Any, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with only the keys of ``old``'s entries, for a study recorded before whole-content
    digests (``content_xxh3_128``): it is compared on what it kept."""
    if not isinstance(old, Mapping):
        return new
    out = dict(new)
    for key in ("checkpoints", "base"):
        was, now = old.get(key), new.get(key)
        entries = [(a, b) for a, b in zip(was or [], now or [], strict=False)]
        if isinstance(was, Mapping) and isinstance(now, Mapping):
            entries = [(was, now)]
        kept = [
            {k: v for k, v in b.items() if k in a}
            if isinstance(a, Mapping) and isinstance(b, Mapping) and "content_xxh3_128" not in a
            else b
            for a, b in entries
        ]
        if isinstance(now, list) and len(was or []) == len(now):
            out[key] = kept
        elif isinstance(now, Mapping) and kept:
            out[key] = kept[0]
    return out


def create_or_resume(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage,
    space: SearchSpace,
    fingerprint: Mapping[str, Any],
    config_path: str | Path,
    *,
    fisher: Mapping[str, Any] | None = None,
    proposals: Proposals | None = None,
) -> tuple[optuna.Study, bool]:
    """Create the study (with its seed trials) or resume it after the checks.

    Seed trials are enqueued in the order of ``cfg.seed_trials``; ``fw`` takes the endpoints
    of ``proposals`` (:func:`search.study.fw.propose`), and with the ``fw`` sampler they are
    the only ones. The paths' record goes into the study's ``fw`` user attr.

    Args:
        fisher: the calibration description for methods that read Fishers (see
            :func:`signature`).
        proposals: the Frank-Wolfe endpoints, needed when the config asks for them.

    Returns:
        ``(study, created)``.
    """

    from search.study.samplers import FW_SAMPLER

    sig = signature(cfg, space, fingerprint, fisher)
    kinds = ("fw",) if cfg.sampler.name == FW_SAMPLER else tuple(dict.fromkeys(cfg.seed_trials))
    if "fw" in kinds and proposals is None:
        raise ValueError("create_or_resume: the config asks for Frank-Wolfe proposals; none given")
    try:
        study = optuna.create_study(study_name=cfg.name, storage=storage, directions=cfg.directions)
    except optuna.exceptions.DuplicatedStudyError:
        study = load_study(cfg, storage)
        check_resume(study, cfg, sig, config_path)
        study.set_user_attr(CONFIG_ATTR, cfg.to_json())  # the latest budget, sampler, ...
        return study, False
    for key, value in sig.items():
        study.set_user_attr(key, value)
    study.set_user_attr(CONFIG_ATTR, cfg.to_json())
    with quiet_experimental():
        study.set_metric_names(cfg.objective_names)
    for kind in kinds:
        seeds = proposals.seeds if kind == "fw" and proposals else space.seed_trials([kind])
        for label, params in seeds:
            study.enqueue_trial(params, user_attrs={"seed_trial": label})
    if proposals is not None:
        study.set_user_attr(FW_ATTR, proposals.record)
    return study, True


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    """A short path to where two JSON-like values first differ, e.g. ``checkpoints[a].bytes``.

    Keys are visited in the new value's order first, so a renamed key is named as it is now.
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in list(new) + [k for k in old if k not in new]:
            if old.get(key) != new.get(key):
                return _first_difference(
                    old.get(key), new.get(key), f"{path}.{key}" if path else str(key)
                )
        return path
    if isinstance(old, list | tuple) and isinstance(new, list | tuple) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            if a != b:
                name = a.get("name") if isinstance(a, Mapping) else None
                return _first_difference(a, b, f"{path}[{name or i}]")
        return path
    shown = f"{old!r} -> {new!r}"
    return f"{path}: {shown}" if len(shown) <= 80 else path


# ------------------------------------------------------------------------------------ claims


@contextlib.contextmanager
def budget_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[None]:
    """Mutual exclusion between workers of one study, held through the storage.

    PostgreSQL: a transaction-level advisory lock keyed by the study name (released when the
    transaction ends, also when the worker dies). SQLite (one host): ``flock`` on
    ``<database>.lock`` beside the file (released by the kernel when the process dies).
    """
    db = sqlite_path(storage.url)
    if db is not None:
        with open(f"{db}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if storage.engine.dialect.name != "postgresql":
        raise UserError(
            f"storage: {storage.engine.dialect.name} is not supported; use SQLite or PostgreSQL"
        )

    key = int.from_bytes(
        hashlib.sha256(f"merge-search:{study_name}".encode()).digest()[:8], "big", signed=True
    )
    with storage.engine.begin() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield


@dataclass(frozen=True)
class Budget:
    """What a study may still spend: trials, and optionally examples scored.

    Attributes:
        n_trials: finished (complete or pruned) plus running trials allowed in all.
        examples: examples the finished trials may have scored in all (``budget.examples``);
            ``None``: no example budget.
        per_trial: the most examples one trial scores (one full evaluation). A running trial
            is counted as if it scores that many, so a trial starts only if a full evaluation
            still fits: the study never scores more than ``examples``.
    """

    n_trials: int
    examples: int | None = None
    per_trial: int = 0

    def allows_another(self, trials: Iterable[optuna.trial.FrozenTrial]) -> bool:
        """Whether one more trial fits, given the study's trials (finished and running count)."""
        from optuna.trial import TrialState

        taken, running, spent = 0, 0, 0
        for t in trials:
            if t.state == TrialState.RUNNING:
                taken, running = taken + 1, running + 1
            elif t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                taken += 1
                spent += int(t.user_attrs.get(EXAMPLES_SCORED, 0))
        if taken >= self.n_trials:
            return False
        if self.examples is None:
            return True
        return spent + (running + 1) * self.per_trial <= self.examples


def claim_trial(
    study: optuna.Study, storage: optuna.storages.RDBStorage, budget: Budget
) -> optuna.Trial | None:
    """Start the next trial if ``budget`` allows another (:meth:`Budget.allows_another`).

    Runs under :func:`budget_lock`: fails stale trials first (their retries come back as
    waiting trials, popped before new ones), counts, asks, and records the first heartbeat so
    a worker that dies right after the claim still leaves a trial that goes stale. An exception
    inside ``ask`` (a sampler's error, or a stop where the caller does not hold stops as
    :func:`search.study.worker.run_worker` does) would leave a running trial without a
    heartbeat, which never goes stale: it is failed and queued again before the error goes on.
    """

    with budget_lock(storage, study.study_name), quiet_experimental():
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if not budget.allows_another(trials):
            return None
        running = {t.number for t in trials if t.state == TrialState.RUNNING}
        # we run our own loop (exact budget, our heartbeat thread); Optuna assumes Study.optimize
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        try:
            trial = study.ask()
            storage.record_heartbeat(trial._trial_id)
        except BaseException:
            _undo_claim(study, storage, running)
            raise
        return trial


def _undo_claim(
    study: optuna.Study, storage: optuna.storages.RDBStorage, running_before: set[int]
) -> None:
    """Fail (and queue again) the trial a broken claim started: under the budget lock, a running
    trial that was not running before the claim is the claim's own."""
    from optuna.trial import TrialState

    retry = storage.get_heartbeat_stale_trial_callback()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in running_before:
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        if retry is not None:
            retry(study, storage.get_trial(t._trial_id))


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name: ``complete``, ``running``, ``waiting``, ``fail``, ``pruned``."""
    return count_states(study.get_trials(deepcopy=False))


def count_states(trials: Iterable[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """``{state name: how many}`` of ``trials`` (lower-case names, as :func:`trial_counts`)."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def finished(counts: Mapping[str, int]) -> int:
    """Trials that count toward the budget: complete or pruned."""
    return counts.get("complete", 0) + counts.get("pruned", 0)


def examples_spent(trials: Iterable[optuna.trial.FrozenTrial]) -> int:
    """Examples scored by the finished (complete or pruned) trials, as they recorded them."""
    return sum(
        int(t.user_attrs.get(EXAMPLES_SCORED, 0))
        for t in trials
        if t.state.name in ("COMPLETE", "PRUNED")
    )


def full_evaluations(study: optuna.Study, spent: int) -> float | None:
    """``spent`` examples as full-evaluation equivalents (``None`` until a worker said how many
    examples one full evaluation scores)."""
    per = study.user_attrs.get(EVALUATION_SIZE_ATTR)
    return spent / per if per else None


class Heartbeat:
    """Records a trial's heartbeat every ``interval`` seconds on a daemon thread while in use."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._storage.record_heartbeat(self._trial_id)
