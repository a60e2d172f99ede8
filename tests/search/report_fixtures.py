"""Studies for the report tests, shared through ``tests/search/report/conftest.py``.

Two layers: a hand-built study (real Optuna trials with chosen values, no model) checks the
choices exactly; a study launched for real on the tiny pool (real merges, real lm-eval) checks
the commands end to end.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main
from search.engine.plan import MergePlan
from search.report.view import view_of
from search.study.record import TrialRecord
from tests.toy_tasks import TOY_CHOICES, write_choice_task

MAX2 = [optuna.study.StudyDirection.MAXIMIZE] * 2


# ------------------------------------------------------------------ a hand-built study, no model


def make_config(**extra):
    from search.study.config import StudyConfig

    data = {
        "name": "handmade",
        "storage": "sqlite:///unused.db",
        "checkpoints": ["pool/a", "pool/b"],
        "objectives": [
            {"name": "instruct", "tasks": [{"task": "demo_instruct"}]},
            {"name": "code", "tasks": [{"task": "demo_code"}]},
        ],
        **extra,
    }
    return StudyConfig.model_validate(data)


def make_trial(values, key, seed=None, constraints=None, state=optuna.trial.TrialState.COMPLETE):
    plan = MergePlan.create("linear", [0.5, 0.5], {"normalize": True})
    record = TrialRecord(
        number=0,
        plan=plan.to_dict(),
        plan_key=key,
        coefficients={"a": [0.5], "b": [0.5]},
        seed_trial=seed,
        constraints=tuple(constraints or ()),
    )
    return optuna.trial.create_trial(
        state=state,
        values=values if state == optuna.trial.TrialState.COMPLETE else None,
        user_attrs=record.to_attrs(),
    )


@pytest.fixture()
def handmade():
    """t0..t5 completed (t4 infeasible, t5 a duplicate of t1's plan), t6 failed."""
    study = optuna.create_study(directions=MAX2)
    study.set_metric_names(["instruct", "code"])
    study.set_user_attr(
        "fingerprint", {"checkpoints": [{"name": "a"}, {"name": "b"}], "base": None}
    )
    for trial in [
        make_trial([0.9, 0.1], "ka", seed="single:a"),
        make_trial([0.6, 0.6], "kb"),
        make_trial([0.1, 0.9], "kc", seed="single:b"),
        make_trial([0.4, 0.4], "kd", seed="uniform"),
        make_trial([1.0, 1.0], "ke", constraints=[0.5]),
        make_trial([0.6, 0.6], "kb"),
        make_trial(None, "kf", state=optuna.trial.TrialState.FAIL),
    ]:
        study.add_trial(trial)
    return view_of(make_config(), study, "sqlite:///unused.db")


# ------------------------------------------- a hand-built SQLite study over the tiny pool: export


def write_study_config(folder: Path, name: str, zoo, **extra) -> Path:
    data = {
        "name": name,
        "storage": f"sqlite:///{folder / 'studies.db'}",
        "checkpoints": [str(p) for p in zoo.checkpoints],
        "base_model": str(zoo.base),
        "merge": {"method": "linear", "weights": {"low": 0.0, "high": 1.0, "normalize": True}},
        "objectives": [
            {"name": "instruct", "tasks": [{"task": "demo_instruct", "metric": "exact_match"}]},
            {"name": "code", "tasks": [{"task": "demo_code", "metric": "exact_match"}]},
        ],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 4},
        "seed_trials": ["uniform"],
        "device": "cpu",
        "dtype": "float32",
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def exportable(tiny_zoo, tmp_path_factory):
    """A study created by the study service with four real plans and chosen scores."""
    return exportable_study(tmp_path_factory.mktemp("exportable"), tiny_zoo)


def exportable_study(folder: Path, zoo, name: str = "exportable", **extra):
    """``(config path, study)``: a study of ``zoo`` (in ``folder``) created by the study service,
    four real plans with chosen scores, no model run (``extra``: more config keys)."""
    from search.engine.pool import CheckpointPool
    from search.study.config import load_config
    from search.study.space import SearchSpace
    from search.study.storage import create_or_resume, open_storage

    path = write_study_config(folder, name, zoo, seed_trials=[], **extra)
    cfg = load_config(path)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model)
    space = SearchSpace.build(cfg, pool.names)
    study, created = create_or_resume(
        cfg, open_storage(cfg, create=True), space, pool.identity.fingerprint(), path
    )
    assert created
    for weights, values in [
        ([1, 1, 1], [0.3, 0.3]),
        ([1, 0, 0], [0.8, 0.1]),
        ([0, 1, 1], [0.2, 0.7]),
        ([2, 1, 0], [0.6, 0.5]),
    ]:
        plan = space.plan(space.weight_values(weights))
        study.add_trial(
            optuna.trial.create_trial(
                values=values,
                user_attrs=TrialRecord(
                    number=0,
                    plan=plan.to_dict(),
                    plan_key=plan.key,
                    coefficients={
                        n: [w / sum(weights)] for n, w in zip(pool.names, weights, strict=True)
                    },
                    task_scores={
                        "demo_instruct/exact_match": values[0],
                        "demo_code/exact_match": values[1],
                    },
                ).to_attrs(),
            )
        )
    return path, study


@pytest.fixture(scope="module")
def rechosen(tiny_zoo, tmp_path_factory):
    """A study over the tiny pool with held-out and test tasks (the committed demo tasks, 20
    examples each): trial 3 is the knee on the search scores, but its held-out re-score (in the
    study's cache, as `pareto` writes it) is dominated by trial 4's, the held-out knee."""
    from search.engine.pool import CheckpointPool
    from search.report.scores import HELDOUT_ATTR, split_spec_key
    from search.study.config import load_config
    from search.study.space import SearchSpace
    from search.study.storage import create_or_resume, open_storage

    folder = tmp_path_factory.mktemp("rechosen")
    path = write_study_config(
        folder,
        "rechosen",
        tiny_zoo,
        seed_trials=[],
        tasks_path=str(Path(__file__).resolve().parents[2] / "configs" / "tasks" / "demo"),
        eval={
            "limit": 20,
            "heldout": {"demo_instruct": "demo_instruct_heldout", "demo_code": "demo_code_heldout"},
            "test": {"demo_instruct": "demo_instruct_test", "demo_code": "demo_code_test"},
        },
    )
    cfg = load_config(path)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model)
    space = SearchSpace.build(cfg, pool.names)
    study, _ = create_or_resume(
        cfg, open_storage(cfg, create=True), space, pool.identity.fingerprint(), path
    )
    heldout = {}
    for weights, values, held in [
        ([1, 1, 1], [0.3, 0.3], None),
        ([1, 0, 0], [0.8, 0.1], [0.7, 0.1]),
        ([0, 1, 1], [0.2, 0.7], [0.1, 0.6]),
        ([2, 1, 0], [0.6, 0.5], [0.3, 0.3]),  # the search knee: a lucky draw on the search split
        ([1, 1, 0], [0.55, 0.55], [0.5, 0.5]),  # the held-out knee
    ]:
        plan = space.plan(space.weight_values(weights))
        study.add_trial(
            optuna.trial.create_trial(
                values=values,
                user_attrs=TrialRecord(
                    number=0,
                    plan=plan.to_dict(),
                    plan_key=plan.key,
                    coefficients={
                        n: [w / sum(weights)] for n, w in zip(pool.names, weights, strict=True)
                    },
                ).to_attrs(),
            )
        )
        if held is not None:
            heldout[plan.key] = {
                "objectives": {"instruct": held[0], "code": held[1]},
                "tasks": {
                    "demo_instruct_heldout/exact_match": held[0],
                    "demo_code_heldout/exact_match": held[1],
                },
            }
    study.set_user_attr(HELDOUT_ATTR, {"spec": split_spec_key(cfg, "heldout"), "scores": heldout})
    return path, study


# the search, held-out and test splits of the launched study: three disjoint sixes
PICK, PICK_HELDOUT, PICK_TEST = TOY_CHOICES[:6], TOY_CHOICES[6:12], TOY_CHOICES[12:18]


@pytest.fixture(scope="module")
def launched(tiny_zoo, tmp_path_factory):
    """A study run by `merge-search launch`: accuracy on a choice task vs perplexity on a text."""
    folder = tmp_path_factory.mktemp("launched")
    tasks = folder / "tasks"
    tasks.mkdir()
    write_choice_task(tasks, "c2_pick", PICK)
    write_choice_task(tasks, "c2_pick_heldout", PICK_HELDOUT)
    write_choice_task(tasks, "c2_pick_test", PICK_TEST)
    (tasks / "text.txt").write_text(
        "the cat sat on the mat.\nreverse: stone? enots\na=4;print(a)? 4\n"
    )
    config = write_study_config(
        folder,
        "launched",
        tiny_zoo,
        objectives=[
            {"name": "pick", "tasks": [{"task": "c2_pick", "metric": "acc"}]},
            {
                "name": "ppl",
                "direction": "minimize",
                "evaluator": "perplexity",
                "data": str(tasks / "text.txt"),
            },
        ],
        tasks_path=str(tasks),
        eval={
            "batch_size": 8,
            "heldout": {"c2_pick": "c2_pick_heldout"},
            "test": {"c2_pick": "c2_pick_test"},
        },
        budget={"n_trials": 5},
        seed_trials=["uniform"],  # the inputs alone are scored by `pareto` itself
    )
    assert main(["launch", str(config)]) == 0
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_get(url: str, path: str) -> str:
    """Start this venv's optuna-dashboard on ``url`` and GET ``path``; the body."""
    port = free_port()
    command = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen(
        [str(command), url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60  # a guard against hanging, not a timed assertion
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.read().decode()
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"optuna-dashboard did not answer: {proc.communicate()[0][-500:]}")
    finally:
        proc.terminate()
        proc.wait(10)
