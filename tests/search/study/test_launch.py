"""`merge-search launch` and `worker` end to end on SQLite: real merges, lm-eval, storage."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from safetensors.torch import load_file, save_file
from study_fixtures import (
    build_pool_and_tasks,
    cli,
    complete,
    study_config,
    trials,
    wait_for,
    write_config,
)

from search.cli import main
from search.engine.plan import MergePlan

# Enough trials that the study is usually still running when the interrupt lands. A trial of
# this tiny pool takes tens of milliseconds and one poll of the storage can take longer than
# all of them: when the launch had already finished its budget, the interrupt test skips.
N_TRIALS = 30


@pytest.fixture(scope="module")
def workdir(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("launch")
    paths = build_pool_and_tasks(root, tiny_zoo)
    storage = f"sqlite:///{root / 'studies' / 'e2e.db'}"
    data = study_config(paths, "e2e", storage, budget={"n_trials": N_TRIALS})
    return {
        "root": root,
        "paths": paths,
        "storage": storage,
        "data": data,
        "config": write_config(root / "e2e.yaml", data),
    }


@pytest.fixture(scope="module")
def finished(workdir: dict[str, Any]) -> dict[str, Any]:
    """Launch, interrupt it (Ctrl-C) after a first finished trial, resume it to the budget."""
    root, storage, config = workdir["root"], workdir["storage"], workdir["config"]
    proc = cli("launch", str(config), cwd=root)
    wait_for(lambda: len(complete(trials("e2e", storage))) >= 1, "a first finished trial", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    before = {t.number: t for t in complete(trials("e2e", storage))}
    interrupted = {
        "returncode": proc.returncode,
        "stderr": err,
        "complete": before,
        "all": trials("e2e", storage),
    }
    assert main(["launch", str(config)]) == 0  # resume: same command
    return {"interrupted": interrupted, "trials": trials("e2e", storage)}


def test_interrupted_launch_stops_cleanly(finished: dict[str, Any]) -> None:
    interrupted = finished["interrupted"]
    if interrupted["returncode"] == 0 and len(interrupted["complete"]) == N_TRIALS:
        pytest.skip("the launch finished its whole budget before the interrupt was sent")
    assert interrupted["returncode"] == 130
    assert "run the same command to continue" in interrupted["stderr"]
    assert 1 <= len(interrupted["complete"]) < N_TRIALS
    # the trial that was running was failed and queued again, not lost
    failed = [t for t in interrupted["all"] if t.state == optuna.trial.TrialState.FAIL]
    requeued = {
        t.system_attrs.get("failed_trial")
        for t in interrupted["all"]
        if t.state == optuna.trial.TrialState.WAITING
    }
    assert {t.number for t in failed} <= requeued


def test_resumed_study_continues_its_count_to_exactly_n_trials(finished: dict[str, Any]) -> None:
    done = complete(finished["trials"])
    assert len(done) == N_TRIALS
    assert not [
        t
        for t in finished["trials"]
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]
    assert len({t.number for t in finished["trials"]}) == len(finished["trials"])
    for number, before in finished["interrupted"]["complete"].items():  # kept as they were
        after = next(t for t in done if t.number == number)
        assert after.values == before.values and after.params == before.params


def test_each_trial_records_what_it_did(finished: dict[str, Any], workdir: dict[str, Any]) -> None:
    names = [Path(c).name for c in workdir["paths"]["checkpoints"]]
    done = complete(finished["trials"])
    seeds = {t.user_attrs.get("seed_trial") for t in done}
    assert {"uniform", *(f"single:{n}" for n in names)} <= seeds
    for t in done:
        attrs = t.user_attrs
        plan = MergePlan.from_dict(attrs["plan"])
        assert plan.key == attrs["plan_key"] and plan.method == "linear"
        assert attrs["params"] == {"normalize": True}
        assert list(attrs["coefficients"]) == names
        assert sum(c[0] for c in attrs["coefficients"].values()) == pytest.approx(1.0)
        assert set(attrs["task_scores"]) >= {"c1_pick/acc"}
        assert attrs["merge_s"] >= 0 and attrs["eval_s"] >= 0
        # 6 c1_pick examples (eval.limit) + 6 texts; a reused plan scores none
        assert attrs["examples_scored"] == (0 if "duplicate_of" in attrs else 12)
        assert len(t.values) == 2 and 0.0 <= t.values[0] <= 1.0 and t.values[1] > 1.0
    single = next(t for t in done if t.user_attrs.get("seed_trial") == f"single:{names[1]}")
    assert single.user_attrs["coefficients"][names[1]] == [1.0]
    # two different merges are scored differently: the trials really evaluate the merged weights
    assert len({t.values[1] for t in done if "duplicate_of" not in t.user_attrs}) > 1


def test_study_records_config_fingerprint_and_objective_names(
    finished: dict[str, Any], workdir: dict[str, Any]
) -> None:
    study = optuna.load_study(study_name="e2e", storage=workdir["storage"])
    assert study.metric_names == ["pick", "ppl"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.user_attrs["config"]["name"] == "e2e"
    assert study.user_attrs["config"]["budget"]["n_trials"] == N_TRIALS
    fp = study.user_attrs["fingerprint"]
    assert [c["name"] for c in fp["checkpoints"]] == [
        Path(c).name for c in workdir["paths"]["checkpoints"]
    ]


def test_a_plan_already_scored_is_reused(finished: dict[str, Any], workdir: dict[str, Any]) -> None:
    """Raising the budget on a study whose seed trials are queued again: same plans, no new eval."""
    study = optuna.load_study(study_name="e2e", storage=workdir["storage"])
    uniform = next(t for t in complete(study.trials) if t.user_attrs.get("seed_trial") == "uniform")
    study.enqueue_trial(uniform.params, user_attrs={"seed_trial": "uniform-again"})
    assert main(["launch", str(workdir["config"]), "--n-trials", str(N_TRIALS + 1)]) == 0
    again = next(
        t
        for t in trials("e2e", workdir["storage"])
        if t.user_attrs.get("seed_trial") == "uniform-again"
    )
    assert again.state == optuna.trial.TrialState.COMPLETE
    assert again.user_attrs["duplicate_of"] == uniform.number
    assert again.values == uniform.values and again.user_attrs["eval_s"] == 0.0
    assert again.user_attrs["examples_scored"] == 0 and uniform.user_attrs["examples_scored"] > 0
    assert len(complete(trials("e2e", workdir["storage"]))) == N_TRIALS + 1


def test_no_trial_starts_after_the_timeout(
    finished: dict[str, Any], workdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    data = {**workdir["data"], "budget": {"n_trials": 50, "timeout_s": 0.001}}
    config = write_config(workdir["root"] / "e2e-timeout.yaml", data)
    count = len(trials("e2e", workdir["storage"]))
    assert main(["worker", str(config)]) == 0
    assert "stopped on timeout" in capsys.readouterr().err
    assert len(trials("e2e", workdir["storage"])) == count


def test_resume_refused_when_the_search_space_changed(
    finished: dict[str, Any], workdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    weights = {"low": 0.0, "high": 2.0, "parametrization": "independent"}
    data = {**workdir["data"], "merge": {"method": "linear", "weights": weights}}
    config = write_config(workdir["root"] / "e2e-space.yaml", data)
    count = len(trials("e2e", workdir["storage"]))
    assert main(["launch", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        "merge: the search space changed (distributions.w_" in err and "use a new study name" in err
    )
    assert len(trials("e2e", workdir["storage"])) == count


def test_resume_refused_after_a_checkpoint_changed(
    finished: dict[str, Any], workdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = Path(workdir["paths"]["checkpoints"][0])
    weights = ckpt / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt", "retrained": "yes"})
    count = len(trials("e2e", workdir["storage"]))
    for command in ("launch", "worker"):
        assert main([command, str(workdir["config"])]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert (
            f"checkpoints: the files changed since the study was created (checkpoints[{ckpt.name}]"
            in err
        )
    assert len(trials("e2e", workdir["storage"])) == count


def test_worker_needs_an_existing_study(
    workdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{workdir['root'] / 'studies' / 'none.db'}"
    config = write_config(
        workdir["root"] / "none.yaml", study_config(workdir["paths"], "none", storage)
    )
    assert main(["worker", str(config)]) == 2
    assert "does not exist; create the study with `merge-search launch`" in capsys.readouterr().err
    assert not Path(storage[len("sqlite:///") :]).exists()


def test_a_task_the_evaluator_refuses_stops_launch_before_anything_is_written(
    workdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a worker's evaluator knows the tasks: the study is created after a worker is ready."""
    storage = f"sqlite:///{workdir['root'] / 'studies' / 'badtask.db'}"
    data = study_config(workdir["paths"], "badtask", storage)
    data["objectives"][0]["tasks"] = [{"task": "c1_pick", "metric": "bleu"}]
    config = write_config(workdir["root"] / "badtask.yaml", data)
    assert main(["launch", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "c1_pick" in err[-1] and "bleu" in err[-1] and err[-1].startswith("merge-search: error:")
    assert not Path(storage[len("sqlite:///") :]).exists()
