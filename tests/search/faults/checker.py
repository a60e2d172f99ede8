"""What must hold in a study at the end, whatever faults it went through (a Jepsen-style checker).

:func:`check_study` reads a finished study from its storage and returns the violations it finds,
one line each (an empty list: everything holds):

- **budget**: exactly ``n_trials`` trials COMPLETE (PRUNED trials count toward the budget too;
  the soak's linear merges never prune, so this is the COMPLETE count there);
- **nothing left running**: no trial RUNNING or WAITING;
- **told once, by one worker**: a FAIL trial holds no values (nothing was told after it failed);
  every COMPLETE trial names the one worker that ran it (``TrialRecord.worker``,
  ``host:pid:device``); of a trial and its retries (a retry chain, Optuna's ``failed_trial``
  system attr naming the chain's first trial) at most one finished: the same work is never
  counted twice;
- **every retry recorded**: a retry names the trial it repeats (the last of its
  ``retry_history``), which is FAIL and belongs to the same chain; a FAIL trial is either failed
  for what it is (``TrialRecord.failed``, e.g. a merge holding NaN: never retried) or queued
  again exactly once, unless its chain already used ``workers.max_retry`` retries (then never);
- **scores add up**: every COMPLETE trial's per-example values decode (``n`` values each); a
  task score whose per-example values are 0/1 or means is their mean (float32 tolerance), a
  perplexity lies between its texts' own perplexities (it is a ratio over texts, not a mean);
  each objective value is the weighted mean of its tasks' scores (read from the config the study
  recorded: a task named without its metric, or a group, is matched by the one recorded score key
  under its name).

The retry invariants are the service's (``search.study.storage``): a trial failed as stale, left
by a killed worker, given up in a storage outage or interrupted is failed and queued again once,
through the storage's ``RetryFailedTrialCallback``; a trial failed for what it is is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.record import TrialRecord, decode_values

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
REL_TOL = 1e-5  # per-example values are kept as float32 (or bits)


def check_study(storage_url: str, study_name: str, n_trials: int) -> list[str]:
    """The violations of the study's end-state invariants (module docstring); ``[]``: all hold."""
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    config = study.user_attrs.get("config") or {}
    return check_trials(study.get_trials(deepcopy=False), n_trials, config)


def check_trials(
    trials: Sequence[FrozenTrial], n_trials: int, config: Mapping[str, Any]
) -> list[str]:
    """:func:`check_study` on trials already read; ``config``: the study's recorded config."""
    out: list[str] = []
    out += _budget(trials, n_trials)
    out += _told_once(trials)
    out += _retries(trials, (config.get("workers") or {}).get("max_retry"))
    objectives = config.get("objectives") or []
    for t in trials:
        if t.state == TrialState.COMPLETE:
            out += [f"trial {t.number}: {v}" for v in check_scores(t, objectives)]
    return out


def _budget(trials: Sequence[FrozenTrial], n_trials: int) -> list[str]:
    out = []
    done = [t for t in trials if t.state in FINISHED]
    if len(done) != n_trials:
        complete = sum(t.state == TrialState.COMPLETE for t in done)
        out.append(
            f"budget: {len(done)} trials finished ({complete} COMPLETE), expected {n_trials}"
        )
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            out.append(f"trial {t.number}: left {t.state.name}")
    return out


def chain_root(t: FrozenTrial) -> int:
    """The first trial of ``t``'s retry chain (``t`` itself unless it is a retry)."""
    root = t.system_attrs.get("failed_trial")
    return t.number if root is None else int(root)


def repeats(t: FrozenTrial) -> int | None:
    """The trial a retry repeats (the last of its ``retry_history``), ``None`` if not a retry."""
    history = t.system_attrs.get("retry_history")
    if history:
        return int(history[-1])
    root = t.system_attrs.get("failed_trial")
    return None if root is None else int(root)


def _told_once(trials: Sequence[FrozenTrial]) -> list[str]:
    out = []
    chains: dict[int, list[int]] = {}
    for t in trials:
        if t.state == TrialState.FAIL and t.values is not None:
            out.append(f"trial {t.number}: FAIL but holds values {t.values} (told after failing)")
        if t.state == TrialState.COMPLETE:
            worker = TrialRecord.from_trial(t).worker
            if not worker or len(worker.split(":")) < 3:
                out.append(f"trial {t.number}: COMPLETE without a worker tag (got {worker!r})")
        if t.state in FINISHED:
            chains.setdefault(chain_root(t), []).append(t.number)
    for root, done in sorted(chains.items()):
        if len(done) > 1:
            out.append(f"trial {root}: finished {len(done)} times in its retry chain ({done})")
    return out


def _retries(trials: Sequence[FrozenTrial], max_retry: int | None) -> list[str]:
    out = []
    by_number = {t.number: t for t in trials}
    retries: dict[int, list[int]] = {}
    for t in trials:
        source = repeats(t)
        if source is None:
            continue
        retries.setdefault(source, []).append(t.number)
        repeated = by_number.get(source)
        if repeated is None:
            out.append(f"trial {t.number}: retries trial {source}, which the study does not hold")
            continue
        if repeated.state != TrialState.FAIL:
            out.append(
                f"trial {t.number}: retries trial {source}, which is {repeated.state.name}, "
                "not FAIL"
            )
        if chain_root(t) != chain_root(repeated):
            out.append(
                f"trial {t.number}: names trial {chain_root(t)} as its first, but trial "
                f"{source} it repeats belongs to trial {chain_root(repeated)}'s chain"
            )
    for t in trials:
        if t.state != TrialState.FAIL:
            continue
        got = retries.get(t.number, [])
        reason = TrialRecord.from_trial(t).failed
        used = len(t.system_attrs.get("retry_history") or [])
        exhausted = max_retry is not None and used >= max_retry
        if reason is not None:
            if got:
                out.append(f"trial {t.number}: failed ({reason}) yet retried by {got}")
        elif exhausted:
            if got:
                out.append(f"trial {t.number}: retried by {got} past max_retry {max_retry}")
        elif len(got) != 1:
            out.append(f"trial {t.number}: FAIL with {len(got)} retries recorded {got}, expected 1")
    return out


def check_scores(t: FrozenTrial, objectives: Sequence[Mapping[str, Any]]) -> list[str]:
    """What does not add up in one COMPLETE trial's scores (see the module docstring)."""
    record = TrialRecord.from_trial(t)
    out = []
    if not record.examples:
        return ["no per-example values recorded"]
    for key, encoded in record.examples.items():
        try:
            values = decode_values(encoded)
        except (KeyError, TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            out.append(f"per-example values of {key} do not decode ({exc})")
            continue
        if len(values) != int(encoded.get("n", -1)) or not values:
            out.append(f"per-example values of {key}: {len(values)} decoded, n={encoded.get('n')}")
            continue
        score = record.task_scores.get(key)
        if score is None:
            out.append(f"per-example values of {key} without a task score")
        elif key.endswith("/perplexity"):
            low, high = min(values), max(values)
            if not low * (1 - REL_TOL) <= score <= high * (1 + REL_TOL):
                out.append(f"{key} = {score} outside its texts' perplexities [{low}, {high}]")
        else:
            mean = math.fsum(values) / len(values)
            if not math.isclose(mean, score, rel_tol=REL_TOL, abs_tol=1e-6):
                out.append(f"{key} = {score} but its {len(values)} examples average {mean}")
    if objectives and len(record.values) != len(objectives):
        out.append(f"{len(record.values)} values for {len(objectives)} objectives")
        return out
    for obj, value in zip(objectives, record.values, strict=False):
        terms = objective_terms(obj, record.task_scores)
        if terms is None:
            out.append(f"objective {obj.get('name')!r}: its task scores are not recorded")
            continue
        total = math.fsum(w for _, w in terms)
        expected = math.fsum(record.task_scores[k] * w for k, w in terms) / total
        if not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"objective {obj.get('name')!r} = {value}, its tasks give {expected}")
    return out


def objective_terms(
    obj: Mapping[str, Any], task_scores: Mapping[str, float]
) -> list[tuple[str, float]] | None:
    """``[(task score key, weight)]`` of a recorded objective, ``None`` when one is missing."""
    if obj.get("evaluator") == "perplexity":
        key = f"{Path(str(obj.get('data'))).name}/perplexity"
        return [(key, 1.0)] if key in task_scores else None
    terms = []
    for ref in obj.get("tasks") or []:
        task, metric = ref.get("task"), ref.get("metric")
        key = f"{task}/{metric}" if metric else None
        if key not in task_scores:
            under = [k for k in task_scores if k.startswith(f"{task}/")]
            if metric:
                under = [k for k in under if k.split("/", 1)[1].split(",")[0] == metric]
            if len(under) != 1:
                return None
            key = under[0]
        terms.append((key, float(ref.get("weight", 1.0))))
    return terms or None
