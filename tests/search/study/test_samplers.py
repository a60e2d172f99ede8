"""Every registered sampler builds from its config and runs a real (in-memory) Optuna study."""

from __future__ import annotations

import optuna
import pytest

from search.study.config import SamplerConfig
from search.study.record import TrialRecord
from search.study.samplers import (
    FW_SAMPLER,
    SAMPLERS,
    build_sampler,
    check_sampler,
    constraints_func,
)


def _objective(n_objectives: int):
    def objective(trial: optuna.Trial) -> list[float]:
        x = trial.suggest_float("x", 0.0, 1.0)
        y = trial.suggest_float("y", 0.0, 1.0)
        return [x + y, (1 - x) * (1 - y)][:n_objectives]

    return objective


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_runs_a_study(name: str) -> None:
    entry = SAMPLERS[name]
    n_obj = 2 if entry.multi_objective else 1
    options = {"population_size": 4} if name in ("nsga2", "nsga3") else {}
    sampler = build_sampler(SamplerConfig(name=name, seed=0, options=options))
    assert isinstance(sampler, entry.optuna_type())
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    study = optuna.create_study(directions=["maximize"] * n_obj, sampler=sampler)
    if name == FW_SAMPLER:  # runs only what was enqueued (the Frank-Wolfe endpoints)
        for i in range(6):
            study.enqueue_trial({"x": i / 5, "y": 1 - i / 5})
    study.optimize(_objective(n_obj), n_trials=6)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 6


def test_constraints_reach_the_sampler_and_the_dashboard_attr() -> None:
    sampler = build_sampler(
        SamplerConfig(name="nsga2", seed=0, options={"population_size": 4}),
        constraints=constraints_func(True, ()),
    )
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)

    def objective(trial: optuna.Trial) -> list[float]:
        values = _objective(2)(trial)
        trial.set_user_attr("constraints", [0.5 - values[1]])  # feasible when value 2 >= 0.5
        return values

    study.optimize(objective, n_trials=8)
    for t in study.trials:
        assert (
            tuple(t.system_attrs["constraints"]) == TrialRecord.from_trial(t).constraints
        )  # what optuna-dashboard reads
    feasible = {t.number for t in study.trials if TrialRecord.from_trial(t).constraints[0] <= 0}
    assert {t.number for t in study.best_trials} <= feasible


def test_worker_seeds_differ_except_for_shared_sequences() -> None:
    def first_point(name: str, worker: int, salt: int) -> dict:
        study = optuna.create_study(
            sampler=build_sampler(SamplerConfig(name=name, seed=7), worker=worker, salt=salt)
        )
        trial = study.ask()
        return {"x": trial.suggest_float("x", 0, 1)}

    assert first_point("random", 0, 0) == first_point("random", 0, 0)
    assert first_point("random", 0, 0) != first_point("random", 1, 0)
    assert first_point("random", 0, 0) != first_point(
        "random", 0, 5
    )  # a resumed study does not replay
    assert first_point("qmc", 0, 0) == first_point(
        "qmc", 3, 5
    )  # QMC coordinates through the storage


def test_check_sampler_accepts_single_objective_cmaes() -> None:
    check_sampler(
        SamplerConfig(name="cmaes", options={"sigma0": 0.2}), n_objectives=1, constrained=False
    )
    with pytest.raises(ValueError, match="cmaes optimizes one objective"):
        check_sampler(SamplerConfig(name="cmaes"), n_objectives=2, constrained=False)


def test_every_worker_of_every_launch_gets_its_own_seed_but_the_first_launch_keeps_its_own() -> (
    None
):
    """The launch that created the study (nonce 0) keeps the seeds it always had (worker 0 with
    nothing in the study: the configured seed; a one-worker study is reproducible); another
    launch's workers (their nonces: host, pid, launch token) never get the same seed."""
    from search.study.processes import worker_nonce
    from search.study.samplers import _seed

    assert _seed(7, 0, 0, False) == 7
    assert _seed(7, 0, 3, False) == _seed(7, 0, 3, False, nonce=0)  # as before the nonces
    first_launch = {_seed(7, w, 3, False) for w in range(4)}
    nonces = {worker_nonce(token) for token in (1, 2, 3)}
    assert len(nonces) == 3 and all(0 < n < 2**63 for n in nonces)
    others = {_seed(7, w, 3, False, nonce=n) for w in range(4) for n in nonces}
    assert len(first_launch) == 4 and len(others) == 12 and not first_launch & others
    assert _seed(7, 0, 0, True, nonce=5) == 7  # a shared-seed sampler coordinates by itself

    def first_x(nonce: int) -> float:
        cfg = SamplerConfig(name="random", seed=7)
        study = optuna.create_study(sampler=build_sampler(cfg, nonce=nonce))
        return study.ask().suggest_float("x", 0.0, 1.0)

    assert first_x(0) == first_x(0) != first_x(5)
