"""The search space built from the config and the method's declared parameters."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from search.engine.materialize import effective_weights
from search.engine.registry import METHODS
from search.study.config import StudyConfig
from search.study.space import SearchSpace

NAMES = ("a", "b", "c")


def config(merge: dict[str, Any], n: int = 3, **extra: Any) -> StudyConfig:
    data = {
        "name": "space",
        "checkpoints": [f"pool/{x}" for x in NAMES[:n]],
        "base_model": "pool/base",
        "merge": merge,
        "objectives": [{"name": "o", "tasks": [{"task": "t"}]}],
        "sampler": {"name": "random", "seed": 3},
        **extra,
    }
    return StudyConfig.model_validate(data)


def test_linear_space_is_one_weight_per_checkpoint() -> None:
    space = SearchSpace.build(
        config({"method": "linear", "weights": {"low": 0.0, "high": 2.0}}), NAMES
    )
    dists = space.distributions()
    assert list(dists) == ["w_a", "w_b", "w_c"]
    assert all(d.low == 0.0 and d.high == 2.0 for d in dists.values())
    assert dict(space.fixed) == {"normalize": True}  # the method's default
    assert space.zero_sum_invalid


def test_layer_groups_and_searched_params() -> None:
    cfg = config(
        {
            "method": "ties",
            "layer_groups": 2,
            "weights": {"normalize": False},
            "params": {"density": {"low": 0.2, "high": 0.8}, "lambda": 0.9},
        }
    )
    space = SearchSpace.build(cfg, NAMES)
    assert list(space.distributions()) == [
        "w_a_g0",
        "w_a_g1",
        "w_b_g0",
        "w_b_g1",
        "w_c_g0",
        "w_c_g1",
        "density",
    ]
    assert dict(space.fixed) == {"lambda": 0.9, "normalize": False}
    assert not space.zero_sum_invalid

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    plan = space.suggest(trial)
    assert plan.method == "ties" and plan.n_groups == 2 and plan.n_checkpoints == 3
    assert plan.weights[1] == (trial.params["w_b_g0"], trial.params["w_b_g1"])
    assert dict(plan.params) == {
        "density": trial.params["density"],
        "lambda": 0.9,
        "normalize": False,
    }
    assert plan.seed == 3
    assert space.plan(trial.params) == plan  # the same values always give the same plan (and key)


def test_seed_trials_are_the_uniform_merge_and_each_checkpoint() -> None:
    cfg = config({"method": "linear"})
    space = SearchSpace.build(cfg, NAMES)
    seeds = space.seed_trials(["uniform", "singles", "uniform"])
    assert [label for label, _ in seeds] == ["uniform", "single:a", "single:b", "single:c"]
    study = optuna.create_study()
    for label, params in seeds:
        study.enqueue_trial(params, user_attrs={"seed_trial": label})
    coefficients = []
    for _ in seeds:
        trial = study.ask()
        coefficients.append(effective_weights(space.suggest(trial)))
        study.tell(trial, 0.0)
    assert [c[0] for c in coefficients[0]] == pytest.approx([1 / 3] * 3)
    assert [c[0] for c in coefficients[1]] == pytest.approx([1.0, 0.0, 0.0])
    assert [c[0] for c in coefficients[3]] == pytest.approx([0.0, 0.0, 1.0])


def test_seed_trials_clip_into_ranges() -> None:
    cfg = config(
        {
            "method": "task_arithmetic",
            "weights": {"low": 0.5, "high": 0.8},
            "params": {"lambda": {"low": 1.2, "high": 1.5}},
        }
    )
    seeds = dict(SearchSpace.build(cfg, NAMES).seed_trials(["uniform", "singles"]))
    assert seeds["uniform"] == {"w_a": 0.5, "w_b": 0.5, "w_c": 0.5, "lambda": 1.2}
    assert seeds["single:b"] == {"w_a": 0.5, "w_b": 0.8, "w_c": 0.5, "lambda": 1.2}


def test_a_method_that_ignores_weights_searches_only_its_parameters() -> None:
    cfg = config({"method": "slerp", "params": {"t": {"low": 0.0, "high": 1.0}}}, n=2)
    space = SearchSpace.build(cfg, NAMES[:2])
    assert not space.uses_weights
    assert list(space.distributions()) == ["t"]
    assert space.seed_trials(["uniform", "singles"]) == [("uniform", {"t": 0.5})]
    plan = space.plan({"t": 0.25})
    assert [c[0] for c in effective_weights(plan)] == pytest.approx([0.75, 0.25])
    assert not METHODS["slerp"].uses_weights
    assert METHODS["linear"].uses_weights


def test_all_zero_weights_are_pruned_when_the_method_normalizes() -> None:
    space = SearchSpace.build(config({"method": "linear"}), NAMES)
    with pytest.raises(optuna.TrialPruned, match="sum to 0"):
        space.plan({"w_a": 0.0, "w_b": 0.0, "w_c": 0.0})
    unnormalized = SearchSpace.build(
        config({"method": "linear", "weights": {"normalize": False}}), NAMES
    )
    assert unnormalized.plan({"w_a": 0.0, "w_b": 0.0, "w_c": 0.0}).weights == (
        (0.0,),
        (0.0,),
        (0.0,),
    )


def test_description_changes_with_the_space() -> None:
    a = SearchSpace.build(config({"method": "linear"}), NAMES).describe()
    assert a == SearchSpace.build(config({"method": "linear"}), NAMES).describe()
    assert (
        a
        != SearchSpace.build(
            config({"method": "linear", "weights": {"high": 2.0}}), NAMES
        ).describe()
    )
    assert (
        a
        != SearchSpace.build(
            config({"method": "linear", "weights": {"normalize": False}}), NAMES
        ).describe()
    )
    assert a != SearchSpace.build(config({"method": "linear"}), ("a", "b", "d")).describe()
