"""Create a study or resume it: the signature a resumed study must keep, seed trials."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from search.errors import UserError
from search.study.notes import study_note, write_study_note
from search.study.record import TrialRecord
from search.study.storage.budget import budget_lock
from search.study.storage.connect import load_study, quiet_experimental
from search.study.strategy import offered

if TYPE_CHECKING:
    from search.study.config import StudyConfig
    from search.study.space import SearchSpace

# Study user attrs (the contract with search.report.view) and the resume signature.
CONFIG_ATTR = "config"
FINGERPRINT_ATTR = "fingerprint"
SPACE_ATTR = "search_space"
SCORING_ATTR = "scoring"


def signature(
    cfg: StudyConfig, space: SearchSpace, fingerprint: Mapping[str, Any]
) -> dict[str, Any]:
    """What a resumed study must keep: the checkpoints, the search space, how trials are scored.

    The strategies' entries (:attr:`search.study.strategy.Offers.signature`, e.g. the
    calibration data of a method's extras: other extras are another merge) are kept with the
    search space.
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
    for entries in offered(cfg.strategies, "signature"):
        described.update(entries())
    return {
        FINGERPRINT_ATTR: dict(fingerprint),
        SPACE_ATTR: described,
        SCORING_ATTR: scoring,
    }


def _objective_signature(objective: Any) -> dict[str, Any]:
    """An objective as the signature keeps it; a task's ``gen_kwargs`` and the objective's
    ``signal`` only when set (studies created before them resume)."""
    data = objective.model_dump(mode="json")
    # recorded as "signal", its name when studies first kept it: they resume
    data["signal"] = data.pop("search_tasks", [])
    if not data.get("signal"):
        data.pop("signal", None)
    for task in [*data.get("tasks", []), *data.get("signal", [])]:
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
        fingerprint: ``PoolIdentity.fingerprint()`` of the files as they are now.
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
) -> tuple[optuna.Study, bool]:
    """Create the study (with its seed trials) or resume it after the checks.

    A new study records its signature (:func:`signature`) and config, names its metrics,
    enqueues its seed trials (:func:`seed_trials`) and keeps what the strategies precomputed
    (:attr:`~search.study.strategy.Offers.study_attrs`).

    Returns:
        ``(study, created)``.
    """
    sig = signature(cfg, space, fingerprint)
    with budget_lock(storage, cfg.name):  # a study is never seen without its signature
        try:
            study = optuna.create_study(
                study_name=cfg.name, storage=storage, directions=cfg.directions
            )
        except optuna.exceptions.DuplicatedStudyError:
            study = load_study(cfg, storage)
            check_resume(study, cfg, sig, config_path)
            study.set_user_attr(CONFIG_ATTR, cfg.to_json())  # the latest budget, sampler, ...
            return study, False
        _record_new(study, cfg, space, sig)
    return study, True


def load_checked(
    cfg: StudyConfig,
    storage: optuna.storages.RDBStorage,
    sig: Mapping[str, Any],
    config_path: str | Path,
) -> optuna.Study:
    """The existing study, after :func:`check_resume`, read under the study's lock so that a
    study being created at this moment is read once its signature is stored."""
    with budget_lock(storage, cfg.name):
        study = load_study(cfg, storage)
        check_resume(study, cfg, sig, config_path)
    return study


def _record_new(
    study: optuna.Study, cfg: StudyConfig, space: SearchSpace, sig: Mapping[str, Any]
) -> None:
    """A new study's signature, config, metric names, note, seed trials and strategies'
    attrs."""
    for key, value in sig.items():
        study.set_user_attr(key, value)
    study.set_user_attr(CONFIG_ATTR, cfg.to_json())
    with quiet_experimental():
        study.set_metric_names(cfg.objective_names)
    write_study_note(study, study_note(cfg))  # the dashboard shows what each objective scores
    for label, params in seed_trials(cfg, space):
        study.enqueue_trial(params, user_attrs=TrialRecord.seed_attrs(label))
    for attrs in offered(cfg.strategies, "study_attrs"):
        for key, value in attrs().items():
            study.set_user_attr(key, value)


def seed_trials(cfg: StudyConfig, space: SearchSpace) -> list[tuple[str, dict[str, Any]]]:
    """The known points a new study enqueues, ``(label, params)`` in the order of
    ``cfg.seed_kinds``: the space's own (uniform, singles) and the strategies' (``fw``, once
    they precomputed them)."""
    provided: dict[str, Any] = {}
    for seeds in offered(cfg.strategies, "seed_trials"):
        provided.update(seeds())
    return [
        seed
        for kind in cfg.seed_kinds
        for seed in (provided[kind] if kind in provided else space.seed_trials([kind]))
    ]


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
