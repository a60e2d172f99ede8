"""`merge-search launch` and `worker` end to end on SQLite: real merges, lm-eval, storage."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from safetensors.torch import load_file, save_file

from evaluators.stats import mean_stderr
from search.cli import main
from search.engine.plan import MergePlan
from search.study.record import TrialRecord
from tests.search.study_fixtures import (
    TEXT,
    build_pool_and_tasks,
    cli,
    complete,
    study_config,
    trials,
    wait_for,
    write_config,
)

N_TRIALS = 30
SLOW_TEXTS = 1500  # lines of the slow study's perplexity file: a trial takes seconds, not ms


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
    """The study launched to its budget; the tests below only read it."""
    assert main(["launch", str(workdir["config"])]) == 0
    return {"trials": trials("e2e", workdir["storage"])}


@pytest.fixture()
def own_study(tiny_zoo: Any, tmp_path: Path) -> dict[str, Any]:
    """A small study of its own (own pool copy, own storage), for a test that changes things."""
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    storage = f"sqlite:///{tmp_path / 'studies' / 'own.db'}"
    data = study_config(paths, "own", storage, budget={"n_trials": 3}, seed_trials=["uniform"])
    config = write_config(tmp_path / "own.yaml", data)
    assert main(["launch", str(config)]) == 0
    return {"root": tmp_path, "paths": paths, "storage": storage, "data": data, "config": config}


@pytest.fixture(scope="module")
def interrupted(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ctrl-C while a trial runs, then the same command again.

    Trials of this study take seconds (a long perplexity file scored one text at a time), and
    the interrupt is sent as soon as the first trial is seen RUNNING, so it lands inside it and
    the launch cannot have finished its budget first.
    """
    root = tmp_path_factory.mktemp("interrupt")
    paths = build_pool_and_tasks(root, tiny_zoo)
    slow = root / "tasks" / "slow.txt"
    slow.write_text("\n".join(TEXT[i % len(TEXT)] for i in range(SLOW_TEXTS)) + "\n")
    paths["text"] = str(slow)
    storage = f"sqlite:///{root / 'studies' / 'slow.db'}"
    data = study_config(
        paths,
        "slow",
        storage,
        budget={"n_trials": 2},
        eval={"limit": None, "batch_size": 1},
        seed_trials=["uniform"],
        workers={"threads": 1, "heartbeat_s": 1, "grace_s": 3},
    )
    config = write_config(root / "slow.yaml", data)
    proc = cli("launch", str(config), cwd=root)

    def running() -> Any:
        return next(
            (t for t in trials("slow", storage) if t.state == optuna.trial.TrialState.RUNNING),
            None,
        )

    target = wait_for(running, "a running trial", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    before = trials("slow", storage)
    resumed = main(["launch", str(config)])
    return {
        "returncode": proc.returncode,
        "stderr": err,
        "target": target,
        "before": before,
        "resumed": resumed,
        "after": trials("slow", storage),
    }


def test_interrupted_launch_stops_cleanly(interrupted: dict[str, Any]) -> None:
    assert interrupted["returncode"] == 130
    assert (
        "stopped at 0/2 finished trials; run the same command to continue"
        in (interrupted["stderr"])
    )
    by_number = {t.number: t for t in interrupted["before"]}
    target = by_number[interrupted["target"].number]
    # the trial that was running was failed and queued again with the same parameters
    assert target.state == optuna.trial.TrialState.FAIL
    retries = [
        t for t in interrupted["before"] if t.system_attrs.get("failed_trial") == target.number
    ]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.WAITING
    assert target.params.items() <= retries[0].params.items()
    assert not complete(interrupted["before"])


def test_resumed_study_continues_its_count_to_exactly_n_trials(
    interrupted: dict[str, Any],
) -> None:
    assert interrupted["resumed"] == 0
    after = interrupted["after"]
    assert len(complete(after)) == 2
    assert not [
        t
        for t in after
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    ]
    assert len({t.number for t in after}) == len(after)
    target = interrupted["target"].number
    retry = next(t for t in after if t.system_attrs.get("failed_trial") == target)
    assert retry.state == optuna.trial.TrialState.COMPLETE  # the retry ran, with its parameters
    assert next(t for t in after if t.number == target).params.items() <= retry.params.items()


def test_each_trial_records_what_it_did(finished: dict[str, Any], workdir: dict[str, Any]) -> None:
    names = [Path(c).name for c in workdir["paths"]["checkpoints"]]
    done = complete(finished["trials"])
    seeds = {TrialRecord.from_trial(t).seed_trial for t in done}
    assert {"uniform", *(f"single:{n}" for n in names)} <= seeds
    for t in done:
        r = TrialRecord.from_trial(t)
        plan = MergePlan.from_dict(r.plan)
        assert plan.key == r.plan_key and plan.method == "linear"
        assert r.params == {"normalize": True}
        assert list(r.coefficients) == names
        assert sum(c[0] for c in r.coefficients.values()) == pytest.approx(1.0)
        assert set(r.task_scores) >= {"c1_pick/acc"}
        # 6 c1_pick examples (eval.limit) + 6 texts; a reused plan scores none and takes no time
        fresh = r.duplicate_of is None
        assert r.examples_scored == (12 if fresh else 0)
        if fresh:  # the merge and the evaluation are timed inside the trial
            took = (t.datetime_complete - t.datetime_start).total_seconds()
            assert 0 < r.merge_s + r.eval_s <= took
        else:
            assert r.merge_s == r.eval_s == 0.0
        assert len(t.values) == 2 and 0.0 <= t.values[0] <= 1.0
        # per-example values (packed) and each objective's standard error
        examples = r.per_example()
        assert set(examples) == set(r.task_scores)
        picks = examples["c1_pick/acc"]
        assert len(picks) == 6 and sum(picks) / 6 == pytest.approx(r.task_scores["c1_pick/acc"])
        assert "bits" in r.examples["c1_pick/acc"]
        assert r.stderr["pick"] == pytest.approx(mean_stderr(picks))
        texts = examples["text.txt/perplexity"]  # each text's own perplexity
        assert len(texts) == 6 and min(texts) <= t.values[1] <= max(texts)  # their token mean
        assert r.stderr["ppl"] == r.task_stderr["text.txt/perplexity"]  # its one term's SE
        assert set(r.task_stderr) == set(r.task_scores)
    single = next(t for t in done if TrialRecord.from_trial(t).seed_trial == f"single:{names[1]}")
    assert TrialRecord.from_trial(single).coefficients[names[1]] == [1.0]
    # two different merges are scored differently: the trials really evaluate the merged weights
    fresh = [t for t in done if TrialRecord.from_trial(t).duplicate_of is None]
    assert len({t.values[1] for t in fresh}) > 1


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


def test_a_plan_already_scored_is_reused(own_study: dict[str, Any]) -> None:
    """Raising the budget on a study whose seed trials are queued again: same plans, no new eval."""
    storage = own_study["storage"]
    study = optuna.load_study(study_name="own", storage=storage)
    uniform = next(
        t for t in complete(study.trials) if TrialRecord.from_trial(t).seed_trial == "uniform"
    )
    study.enqueue_trial(uniform.params, user_attrs=TrialRecord.seed_attrs("uniform-again"))
    assert main(["launch", str(own_study["config"]), "--n-trials", "4"]) == 0
    again = next(
        t for t in trials("own", storage) if TrialRecord.from_trial(t).seed_trial == "uniform-again"
    )
    assert again.state == optuna.trial.TrialState.COMPLETE
    assert again.values == uniform.values
    again, uniform = TrialRecord.from_trial(again), TrialRecord.from_trial(uniform)
    assert again.duplicate_of == uniform.number and again.eval_s == 0.0
    for field in ("examples", "stderr", "task_stderr", "task_scores"):
        assert getattr(again, field) == getattr(uniform, field)
    assert again.examples_scored == 0 and uniform.examples_scored > 0
    assert len(complete(trials("own", storage))) == 4


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
    own_study: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = Path(own_study["paths"]["checkpoints"][0])
    weights = ckpt / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt", "retrained": "yes"})
    count = len(trials("own", own_study["storage"]))
    capsys.readouterr()
    for command in ("launch", "worker"):
        assert main([command, str(own_study["config"])]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert (
            f"checkpoints: the files changed since the study was created (checkpoints[{ckpt.name}]"
            in err
        )
    assert len(trials("own", own_study["storage"])) == count


def test_constraints_reach_a_real_worker_and_the_sampler(
    workdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bounds from the config: every trial stores its values, NSGA-II reads them, pareto obeys."""
    storage = f"sqlite:///{workdir['root'] / 'studies' / 'bounded.db'}"
    data = study_config(
        workdir["paths"],
        "bounded",
        storage,
        budget={"n_trials": 10},
        constraints=[{"objective": "ppl", "max": 1e9}, {"objective": "pick", "min": 0.3}],
    )
    config = write_config(workdir["root"] / "bounded.yaml", data)
    assert main(["launch", str(config)]) == 0
    done = complete(trials("bounded", storage))
    assert len(done) == 10
    for t in done:
        pick, ppl = t.values
        expected = [ppl - 1e9, 0.3 - pick]  # Optuna's convention: <= 0 is feasible
        assert TrialRecord.from_trial(t).constraints == pytest.approx(expected)
        assert t.system_attrs["constraints"] == pytest.approx(expected)  # what the sampler saw
    feasible = {t.number for t in done if t.values[0] >= 0.3}
    infeasible = {t.number for t in done} - feasible
    assert feasible and infeasible, "the bound should split the merges of the tiny pool"
    capsys.readouterr()
    assert main(["pareto", str(config), "--json", "--no-heldout"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["trial"] for r in report["front"]} <= feasible
    assert {t["trial"] for t in report["trials"] if not t["feasible"]} == infeasible


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


def test_launch_states_devices_pool_and_load_time_and_placement_may_change_on_resume(
    workdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A study on a disk pool, resumed on a host pool: placement never changes a merge."""
    import socket

    storage = f"sqlite:///{workdir['root'] / 'studies' / 'placed.db'}"
    data = study_config(workdir["paths"], "placed", storage, pool="disk", budget={"n_trials": 3})
    config = write_config(workdir["root"] / "placed.yaml", data)
    assert main(["launch", str(config)]) == 0
    err = capsys.readouterr().err
    assert "starting 1 worker(s) on cpu: each loads" in err
    assert "pool: disk (requested): stacks " in err and " + model " in err
    first = next(line for line in err.splitlines() if line.startswith("first trial "))
    assert " s after the start; worker 0 loaded in " in first and "pool " in first
    done = complete(trials("placed", storage))
    assert len(done) == 3
    host = socket.gethostname()
    assert all(
        TrialRecord.from_trial(t).worker.startswith(f"{host}:")
        and TrialRecord.from_trial(t).worker.endswith(":cpu")
        for t in done
    )

    resumed = write_config(workdir["root"] / "placed-host.yaml", {**data, "pool": "auto"})
    assert main(["launch", str(resumed), "--n-trials", "4"]) == 0
    err = capsys.readouterr().err
    assert "pool: device (auto, margin 15%)" in err and "host memory available" in err
    assert "resumed" in err and len(complete(trials("placed", storage))) == 4
