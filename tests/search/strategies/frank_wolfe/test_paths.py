"""Frank-Wolfe proposals: the algorithm's O(1/t) bound, preference vectors, enqueued endpoints,
and a study run by the ``fw`` sampler end to end (real pool, lm-eval, SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from search.engine.materialize import effective_weights
from search.engine.model import load_model
from search.engine.pool import CheckpointPool
from search.strategies.frank_wolfe import STUDY_ATTR as FW_ATTR
from search.strategies.frank_wolfe.paths import frank_wolfe, preference_vectors, propose
from search.strategies.frank_wolfe.sampler import FrankWolfeSampler
from search.study.config import parse_config
from search.study.record import TrialRecord
from search.study.space import SearchSpace
from search.study.storage import create_or_resume, open_storage
from tests.search.study_fixtures import build_pool_and_tasks, cli, study_config, write_config

# ------------------------------------------------------------------------------ the algorithm


def project_to_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the simplex (sort-based, Held et al.), written independently."""
    u = np.sort(y)[::-1]
    css = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(y) + 1) > (css - 1))[0][-1]
    return np.maximum(y - (css[rho] - 1) / (rho + 1.0), 0.0)


@pytest.mark.parametrize("inside", [True, False], ids=["interior-minimizer", "on-a-face"])
def test_frank_wolfe_reaches_the_minimizer_of_a_convex_quadratic_within_its_bound(inside):
    """f(x) = Σ_g ½ (x_g − y_g)ᵀ A_g (x_g − y_g) over two simplices (columns).

    Interior minimizer: y_g in the simplex, f* = 0, A_g random SPD. On a face: A = I, the
    minimizer is the projection of y_g. Bound: f(x_t) − f* ≤ 2 C_f / (t + 2) with
    C_f ≤ L · diam² = 2 L per column (Jaggi 2013), for t ≥ 1.
    """
    rng = np.random.default_rng(0)
    k, groups = 5, 2
    if inside:
        ys = [rng.dirichlet(np.ones(k)) for _ in range(groups)]
        mats = []
        for _ in range(groups):
            q = rng.normal(size=(k, k))
            mats.append(q @ q.T / k + 0.5 * np.eye(k))
        minimizers = ys
    else:
        ys = [rng.normal(size=k) * 2 for _ in range(groups)]
        mats = [np.eye(k) for _ in range(groups)]
        minimizers = [project_to_simplex(y) for y in ys]

    def f(x):
        return sum(0.5 * (x[:, g] - ys[g]) @ mats[g] @ (x[:, g] - ys[g]) for g in range(groups))

    def grad(x):
        return np.stack([mats[g] @ (x[:, g] - ys[g]) for g in range(groups)], axis=1)

    best = f(np.stack(minimizers, axis=1))
    c_f = sum(2 * np.linalg.eigvalsh(m).max() for m in mats)
    start = np.full((k, groups), 1 / k)
    iterates = frank_wolfe(grad, start, 400)
    assert len(iterates) == 401
    for t, x in enumerate(iterates[1:], start=1):
        np.testing.assert_allclose(x.sum(axis=0), 1.0, atol=1e-12)
        assert (x >= 0).all()
        assert f(x) - best <= 2 * c_f / (t + 2) + 1e-12, t
    mu = min(np.linalg.eigvalsh(m).min() for m in mats)
    gap = f(iterates[-1]) - best
    assert gap < 5e-3
    # strong convexity: |x - x*|² <= 2 (f(x) - f*) / μ
    distance = np.linalg.norm(iterates[-1] - np.stack(minimizers, axis=1))
    assert distance <= np.sqrt(2 * gap / mu) + 1e-9


def test_the_first_step_takes_the_vertex_with_the_most_negative_gradient_per_group():
    g = np.array([[0.3, -1.0], [-0.5, 2.0], [0.1, 0.0]])
    x0, x1 = frank_wolfe(lambda x: g, np.full((3, 2), 1 / 3), 1)
    np.testing.assert_array_equal(x1, [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # γ_0 = 1


def test_preference_vectors_are_spread_evenly():
    assert preference_vectors(1, 5) == [(1.0,)]
    assert preference_vectors(2, 5) == [
        (1.0, 0.0),
        (0.75, 0.25),
        (0.5, 0.5),
        (0.25, 0.75),
        (0.0, 1.0),
    ]
    assert preference_vectors(2, 1) == [(0.5, 0.5)]
    three = preference_vectors(3, 5)
    assert len(set(three)) == 5
    assert all(abs(sum(p) - 1) < 1e-12 and min(p) >= 0 for p in three)
    assert {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)} <= set(three)


# ------------------------------------------------------------------- proposals and the study


@pytest.fixture(scope="module")
def paths(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fw")
    return {"root": root, **build_pool_and_tasks(root, tiny_zoo)}


@pytest.fixture(scope="module")
def runtime(paths: dict[str, Any]):
    pool = CheckpointPool.open(paths["checkpoints"], paths["base_model"]).load()
    model, tokenizer = load_model(pool)
    return pool, model, tokenizer


def _cfg(paths, name, **extra):
    storage = f"sqlite:///{paths['root'] / 'studies' / name}.db"
    data = study_config(paths, name, storage, fw={"examples": 4, "steps": 4, "preferences": 3})
    data.update(extra)
    return parse_config(data)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize(
    "merge",
    [
        {"method": "linear", "weights": {"low": 0.0, "high": 1.0}},
        {
            "method": "linear",
            "layer_groups": 2,
            "weights": {"low": 0.0, "high": 0.4, "parametrization": "independent"},
        },
        {"method": "linear", "weights": {"low": 0.0, "high": 1.0, "normalize": False}},
    ],
    ids=["normalized", "groups-and-scaled", "independent"],
)
def test_enqueued_fw_trials_reproduce_their_coefficients(paths, runtime, merge):
    pool, model, tokenizer = runtime
    name = f"fw-enqueue-{merge.get('layer_groups', 1)}-{merge['weights'].get('normalize')}"
    cfg = _cfg(paths, name, merge=merge, seed_trials=["uniform", "fw"])
    space = SearchSpace.build(cfg, pool.names)
    (fw,) = cfg.strategies
    fw.proposals = propose(cfg, fw.settings, space, pool, model, tokenizer)
    storage = open_storage(cfg, create=True)
    study, created = create_or_resume(cfg, storage, space, pool.identity.fingerprint(), "cfg.yml")
    assert created
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    labels = [TrialRecord.from_trial(t).seed_trial for t in waiting]
    assert labels[0] == "uniform"  # in the order of seed_trials, before the sampler's own
    assert labels[1:] == ["fw:pick=1,ppl=0", "fw:pick=0.5,ppl=0.5", "fw:pick=0,ppl=1"]
    record = study.user_attrs[FW_ATTR]
    assert [p["label"] for p in record["paths"]] == labels[1:]
    # every gradient evaluation runs one backward pass per proxy batch of both objectives
    evaluations, passes = record["gradient_evaluations"], record["backward_passes"]
    assert evaluations >= 4 and passes % evaluations == 0 and passes >= 2 * evaluations
    assert record["examples"] == {
        "pick": {"c1_pick": 4},
        "ppl": {"text.txt": 4},
    }
    for path in record["paths"]:
        assert len(path["weighted_loss_per_step"]) == fw.settings.steps + 1
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # the uniform seed
    for path in record["paths"]:
        trial = study.ask()  # pops the queue in order
        assert TrialRecord.from_trial(trial).seed_trial == path["label"]
        plan = space.suggest(trial)
        applied = effective_weights(plan)
        for i, checkpoint in enumerate(space.names):
            np.testing.assert_allclose(applied[i], path["coefficients"][checkpoint], atol=1e-12)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def test_the_fw_sampler_proposes_nothing_of_its_own():
    study = optuna.create_study(sampler=FrankWolfeSampler(seed=0))
    study.enqueue_trial({"x": 0.25})
    assert study.ask().suggest_float("x", 0, 1) == 0.25
    from search.errors import UserError

    with pytest.raises(UserError, match="not a Frank-Wolfe endpoint"):
        study.ask().suggest_float("x", 0, 1)


def test_a_study_with_the_fw_sampler_runs_exactly_its_paths(paths: dict[str, Any]) -> None:
    root = paths["root"]
    storage = f"sqlite:///{root / 'studies' / 'fw-only.db'}"
    data = study_config(
        paths,
        "fw-only",
        storage,
        sampler={"name": "fw"},
        budget={"n_trials": 50},
        fw={"examples": 4, "steps": 3, "preferences": 2},
    )
    config = write_config(root / "fw-only.yaml", data)
    proc = cli("launch", str(config), cwd=root)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Frank-Wolfe: 2 path(s) x 3 steps" in err and "backward passes" in err
    study = optuna.load_study(study_name="fw-only", storage=storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [TrialRecord.from_trial(t).seed_trial for t in trials] == [
        "fw:pick=1,ppl=0",
        "fw:pick=0,ppl=1",
    ]
    done = study.user_attrs[FW_ATTR]
    assert done["backward_passes"] % done["gradient_evaluations"] == 0
    assert done["backward_passes"] >= 2 * done["gradient_evaluations"] > 0
    assert "2/2 trials finished" in err


def test_fw_needs_a_method_that_is_a_weighted_sum(paths: dict[str, Any]) -> None:
    from search.errors import UserError

    data = study_config(paths, "x", "sqlite:///x.db", seed_trials=["fw"])
    data["merge"] = {"method": "task_arithmetic"}
    with pytest.raises(UserError, match="seed_trials: Frank-Wolfe proposals need"):
        parse_config(data, Path("cfg.yml"))
