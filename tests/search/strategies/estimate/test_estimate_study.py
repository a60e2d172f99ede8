"""Estimated scoring as a strategy: its refusals, and studies with it on the tiny pool.

The tasks are 80 random multiple-choice items each (the tiny pool's checkpoints answer them
differently, so a merge's accuracy depends on its weights); ``eval.estimate.n`` 10 of 80.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from search.cli import main
from search.engine.plan import MergePlan
from search.errors import UserError
from search.strategies.estimate.design import Design
from search.strategies.estimate.strategy import EstimateFields
from search.study.config import load_config
from search.study.record import TrialRecord, decode_values
from tests.search.study_fixtures import (
    build_pool_and_tasks,
    complete,
    study_config,
    write_config,
)
from tests.toy_tasks import write_choice_task

ITEMS = 80
N = 10  # eval.estimate.n


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_zoo: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("estimate")
    paths = build_pool_and_tasks(root, tiny_zoo)
    rng = random.Random(0)
    letters = "abcdefghij"
    for name in ("pick_x", "pick_y"):
        rows = [
            (
                "".join(rng.choice(letters) for _ in range(5)) + "=",
                ["".join(rng.choice(letters) for _ in range(3)) for _ in range(3)],
                rng.randrange(3),
            )
            for _ in range(ITEMS)
        ]
        write_choice_task(Path(paths["tasks_path"]), name, rows)
    return paths


def _data(built: dict[str, Any], tmp_path: Path, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "objectives": [
            {"name": task, "tasks": [{"task": task, "metric": "acc"}]}
            for task in ("pick_x", "pick_y")
        ],
        "merge": {"method": "linear"},
        "eval": {"batch_size": 64, "seed": 3, "estimate": {"n": N, "confidence": 0.6}},
        "seed_trials": ["uniform", "singles"],
        "budget": {"n_trials": 10},
        "sampler": {"name": "random", "seed": 0},
    }
    data = study_config(built, "est", f"sqlite:///{tmp_path / 'est.db'}", **settings)
    data.update(extra)
    return data


def _config(built: dict[str, Any], tmp_path: Path, **extra: Any) -> Path:
    return write_config(tmp_path / "est.yaml", _data(built, tmp_path, **extra))


def _records(tmp_path: Path) -> list[TrialRecord]:
    study = optuna.load_study(study_name="est", storage=f"sqlite:///{tmp_path / 'est.db'}")
    done = sorted(complete(study.get_trials()), key=lambda t: t.number)
    return [TrialRecord.from_trial(t) for t in done]


def _fields(record: TrialRecord) -> EstimateFields:
    fields = EstimateFields.of(record, "estimate")
    assert fields is not None
    return fields


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"objectives": "ppl"},
            "eval.estimate: objectives[1] ('ppl') scores perplexity",
        ),
        ({"seed_trials": ["uniform"]}, "add singles to seed_trials (now ['uniform'])"),
        ({"eval.limit": 15}, "eval.estimate.n: 10 examples per task at the first look need"),
        ({"eval.staged": {}}, "eval.estimate: scores each trial in its own way, as eval.staged"),
        ({"eval.estimate": {"model": "irt"}}, "eval.estimate.model"),
        ({"eval.estimate": {"n": 1}}, "eval.estimate.n"),
        ({"eval.estimate": {"fit": "scored"}}, "fit: scored fits on the shared examples"),
        (
            {"eval.estimate": {"n": 5, "audit": 5}, "eval.limit": 15},
            "eval.estimate.n: 10 examples per task at the first look (n + audit) need",
        ),
    ],
)
def test_a_config_it_cannot_serve_is_refused_in_one_line(
    built: dict[str, Any], tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    data = _data(built, tmp_path)
    for key, value in change.items():
        if key == "objectives":
            data["objectives"] = study_config(built, "x", "sqlite:///x.db")["objectives"]
        elif key.startswith("eval."):
            data["eval"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    with pytest.raises(UserError) as caught:
        load_config(write_config(tmp_path / "bad.yaml", data))
    line = str(caught.value)
    assert expected in line and "\n" not in line


def test_a_task_too_small_for_the_design_is_refused_before_any_trial(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(built, tmp_path, eval={"batch_size": 64, "estimate": {"n": 41}})
    assert main(["launch", str(config), "--workers", "1"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the launcher's progress
    assert "eval.estimate.n: 41 examples per task at the first look need tasks of at least 82" in (
        line
    )
    assert "pick_x has 80" in line
    assert not _trials_exist(tmp_path)


def _trials_exist(tmp_path: Path) -> bool:
    db = tmp_path / "est.db"
    if not db.exists():
        return False
    study = optuna.load_study(study_name="est", storage=f"sqlite:///{db}")
    return any(t.state.is_finished() for t in study.get_trials())


def test_without_the_section_nothing_changes(built: dict[str, Any], tmp_path: Path) -> None:
    data = _data(built, tmp_path)
    del data["eval"]["estimate"]
    cfg = load_config(write_config(tmp_path / "off.yaml", data))
    assert [s.name for s in cfg.strategies] == []


# ------------------------------------------------------------------------------ studies


def test_a_study_estimates_its_sampler_trials_and_scores_its_inputs_in_full(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(built, tmp_path)
    assert main(["launch", str(config), "--workers", "1"]) == 0
    records = _records(tmp_path)
    assert len(records) == 10
    total = 2 * ITEMS
    seeds = [r for r in records if r.seed_trial]
    assert len(seeds) == 4  # uniform + three inputs: in full, never stopped
    for r in seeds:
        f = _fields(r)
        assert f.full and r.examples_scored == total and not r.stopped
        assert len(r.per_example()["pick_x/acc"]) == ITEMS
    sampler = [r for r in records if not r.seed_trial and r.duplicate_of is None]
    assert sampler
    stopped = [r for r in sampler if r.stopped]
    full = [r for r in sampler if not r.stopped]
    assert stopped, "the random sampler's merges include some the front clearly beats"
    for r in stopped:
        f = _fields(r)
        assert 2 * N <= f.n < total and r.examples_scored == f.n
        assert sum(f.counts.values()) == f.n  # no audit: the shared prefix alone
        assert r.examples == {} and f.violation == pytest.approx(1 - f.n / total)
        assert list(r.values) == [f.estimates["pick_x"], f.estimates["pick_y"]]
        assert r.stderr == f.ses and all(se is not None and se > 0 for se in f.ses.values())
        assert f.stopped_by in {s.number for s in records if not s.stopped}
    for r in full:
        f = _fields(r)
        assert f.full and r.examples_scored == total and f.looks >= 2
        values = r.per_example()
        assert list(r.values) == pytest.approx([np.mean(values[k]) for k in values])
    # every stopped trial's recorded values are those a full evaluation gives at the examples
    # its design names, and its estimate is within 4 SE of that full evaluation's score
    from search.study.worker import Runtime

    cfg = load_config(config)
    runtime = Runtime.create(cfg)
    for r in stopped:
        scores, _, _ = runtime.score(MergePlan.from_dict(r.plan))
        f = _fields(r)
        design = Design(f.seed, f.counts["pick_x"])
        for task in ("pick_x", "pick_y"):
            key = f"{task}/acc"
            shared, _ = design.sample(task, ITEMS, r.number, shared=f.counts[task])
            truth = np.asarray(scores.examples[key])
            assert decode_values(f.values[key]) == tuple(truth[np.sort(shared)])
            estimate, se = f.estimates[task], f.ses[task]
            assert abs(estimate - truth.mean()) <= 4 * se + 1e-9
    capsys.readouterr()
    assert main(["pareto", str(config), "--json"]) == 0
    front = {p["trial"] for p in json.loads(capsys.readouterr().out)["front"]}
    assert front and not front & {r.number for r in stopped}  # estimates are never an answer


def test_a_resumed_study_goes_on_estimating(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["launch", str(_config(built, tmp_path, budget={"n_trials": 4}))]) == 0
    first = _records(tmp_path)  # the seed trials: the inputs and the uniform merge
    assert main(["launch", str(_config(built, tmp_path, budget={"n_trials": 10}))]) == 0
    err = capsys.readouterr().err
    assert "resumed" in err and "estimated from part of their examples" in err
    records = _records(tmp_path)
    assert len(records) == 10
    assert [r.examples_scored for r in records[:4]] == [r.examples_scored for r in first]
    later = records[4:]
    assert all(not r.seed_trial for r in later)  # the inputs are not scored again
    assert all(_fields(r).n == r.examples_scored for r in later if r.duplicate_of is None)
    # fitted on resume: every new trial went through the estimator's looks (a plain full
    # evaluation, what an unfitted scorer gives, is one look, never stopped). Whether one of them
    # is stopped depends on the resumed launch's sampler seed, which varies with its process
    own = [r for r in later if r.duplicate_of is None]
    assert own and all(r.stopped or _fields(r).looks > 1 for r in own)


def test_at_max_share_a_trial_in_doubt_keeps_its_estimates(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    estimate = {"n": N, "confidence": 0.6, "max_share": N / ITEMS}  # the cap is the first look
    config = _config(built, tmp_path, eval={"batch_size": 64, "seed": 3, "estimate": estimate})
    assert main(["launch", str(config), "--workers", "1"]) == 0
    sampler = [r for r in _records(tmp_path) if not r.seed_trial and r.duplicate_of is None]
    assert sampler and all(r.examples_scored == 2 * N for r in sampler)
    capped = [r for r in sampler if not r.stopped]
    assert capped, "some of the random sampler's merges are in doubt at the first look"
    for r in capped:
        f = _fields(r)
        assert not f.full and f.violation == 0.0 and r.feasible and r.examples == {}
        assert list(r.values) == [f.estimates["pick_x"], f.estimates["pick_y"]]
    capsys.readouterr()
    assert main(["pareto", str(config), "--json"]) == 0  # estimates may stand on the front


def test_audit_fit_scored_and_promotion(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Capped trials score a shared prefix and an audit of their own, the model fits on every
    value scored, and trials that would join the front are scored in full within the budget."""
    n, audit, promote = 4, 6, 0.5
    estimate = {
        "n": n,
        "audit": audit,
        "fit": "scored",
        "confidence": 0.6,
        "max_share": n / ITEMS,  # the shared part stops at the first look
        "promote": promote,
    }
    config = _config(
        built,
        tmp_path,
        eval={"batch_size": 64, "seed": 3, "estimate": estimate},
        budget={"n_trials": 12},
    )
    assert main(["launch", str(config), "--workers", "1"]) == 0
    total, first = 2 * ITEMS, 2 * (n + audit)
    sampler = [r for r in _records(tmp_path) if not r.seed_trial and r.duplicate_of is None]
    promoted = [r for r in sampler if _fields(r).full]
    partial = [r for r in sampler if not _fields(r).full]
    assert promoted and partial
    assert all(r.examples_scored == total and r.examples for r in promoted)
    assert all(r.examples_scored == first for r in partial)
    spent = sum(r.examples_scored for r in sampler)
    assert spent <= (first / total + promote) * total * len(sampler)
    from search.study.worker import Runtime

    runtime = Runtime.create(load_config(config))
    for r in partial:
        scores, _, _ = runtime.score(MergePlan.from_dict(r.plan))
        f = _fields(r)
        design = Design(f.seed, n, f.audit)
        for task in ("pick_x", "pick_y"):
            key = f"{task}/acc"
            docs = np.union1d(*design.sample(task, ITEMS, r.number))
            truth = np.asarray(scores.examples[key])
            assert decode_values(f.values[key]) == tuple(truth[docs])
            assert abs(f.estimates[task] - truth.mean()) <= 4 * f.ses[task] + 1e-9
