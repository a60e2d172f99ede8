"""The example budget: ``examples_scored`` per trial, ``budget.examples`` exact and resumable."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from search.cli import main
from search.study.record import TrialRecord
from search.study.storage import EVALUATION_SIZE_ATTR, Budget
from tests.search.study_fixtures import (
    build_pool_and_tasks,
    complete,
    study_config,
    trials,
    write_config,
)

PER_TRIAL = 12  # study_config: 6 examples of c1_pick (eval.limit 6) + the 6 perplexity texts


def finished_trial(examples: int, state=optuna.trial.TrialState.COMPLETE):
    return optuna.trial.create_trial(
        state=state,
        values=[0.5] if state == optuna.trial.TrialState.COMPLETE else None,
        user_attrs=TrialRecord(0, examples_scored=examples).to_attrs(),
    )


def running_trial():
    return optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING)


def test_a_trial_starts_only_while_a_full_evaluation_still_fits() -> None:
    done = [finished_trial(10), finished_trial(0), finished_trial(10)]  # a reuse scores nothing
    assert Budget(n_trials=10, examples=30, per_trial=10).allows_another(done)
    assert not Budget(n_trials=10, examples=29, per_trial=10).allows_another(done)
    # a running trial holds a full evaluation until it records what it scored
    assert not Budget(n_trials=10, examples=30, per_trial=10).allows_another(
        [*done, running_trial()]
    )
    assert Budget(n_trials=10, examples=40, per_trial=10).allows_another([*done, running_trial()])
    assert not Budget(n_trials=3, examples=1000, per_trial=10).allows_another(done)
    assert Budget(n_trials=4).allows_another(done)  # no example budget
    pruned = finished_trial(4, state=optuna.trial.TrialState.PRUNED)  # partial scores count
    failed = finished_trial(10, state=optuna.trial.TrialState.FAIL)  # retried: not counted
    assert not Budget(n_trials=10, examples=33, per_trial=10).allows_another([*done, pruned])
    assert Budget(n_trials=10, examples=34, per_trial=10).allows_another([*done, pruned, failed])


@pytest.fixture(scope="module")
def workdir(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("budget")
    paths = build_pool_and_tasks(root, tiny_zoo)
    storage = f"sqlite:///{root / 'studies' / 'budget.db'}"

    def config(examples: int) -> str:
        data = study_config(paths, "budget", storage, budget={"n_trials": 50, "examples": examples})
        return str(write_config(root / f"budget-{examples}.yaml", data))

    return {"root": root, "storage": storage, "config": config}


def test_the_example_budget_stops_the_study_exactly_and_survives_a_resume(
    workdir: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    storage = workdir["storage"]
    assert main(["launch", workdir["config"](40)]) == 0  # 3 full evaluations fit in 40
    err = capsys.readouterr().err
    assert "budget 50 trials or 40 examples" in err
    assert "3.0 full evaluations (36/40 examples scored)" in err
    done = complete(trials("budget", storage))
    assert (
        len(done) == 3
        and [TrialRecord.from_trial(t).examples_scored for t in done] == [PER_TRIAL] * 3
    )
    study = optuna.load_study(study_name="budget", storage=storage)
    assert study.user_attrs[EVALUATION_SIZE_ATTR] == PER_TRIAL

    assert main(["launch", workdir["config"](40)]) == 0  # resumed: the budget is spent
    assert "has already spent its budget of 50 trials or 40 examples" in capsys.readouterr().err
    assert len(complete(trials("budget", storage))) == 3  # (a seed trial still waits)

    assert main(["launch", workdir["config"](64)]) == 0  # a larger budget counts what was spent
    assert "5.0 full evaluations (60/64 examples scored)" in capsys.readouterr().err
    done = complete(trials("budget", storage))
    assert len(done) == 5 and sum(TrialRecord.from_trial(t).examples_scored for t in done) == 60
