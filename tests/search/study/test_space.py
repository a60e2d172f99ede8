"""The search space built from the config and the method's declared parameters."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from search.engine.materialize import effective_weights
from search.engine.model import load_model
from search.engine.registry import METHODS
from search.study.config import StudyConfig
from search.study.record import TrialRecord
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
        config(
            {
                "method": "linear",
                "weights": {"low": 0.0, "high": 2.0, "parametrization": "independent"},
            }
        ),
        NAMES,
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
        study.enqueue_trial(params, user_attrs=TrialRecord.seed_attrs(label))
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
    independent = {"parametrization": "independent"}
    space = SearchSpace.build(config({"method": "linear", "weights": independent}), NAMES)
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
    independent = {"parametrization": "independent"}
    a = SearchSpace.build(config({"method": "linear", "weights": independent}), NAMES).describe()
    assert (
        a
        == SearchSpace.build(config({"method": "linear", "weights": independent}), NAMES).describe()
    )
    assert (
        a
        != SearchSpace.build(
            config({"method": "linear", "weights": {**independent, "high": 2.0}}), NAMES
        ).describe()
    )
    simplex = SearchSpace.build(config({"method": "linear"}), NAMES).describe()
    assert simplex["parametrization"] == "simplex" and a["parametrization"] == "independent"
    assert simplex != a
    assert (
        a
        != SearchSpace.build(
            config({"method": "linear", "weights": {"normalize": False}}), NAMES
        ).describe()
    )
    other_names = SearchSpace.build(
        config({"method": "linear", "weights": independent}), ("a", "b", "d")
    ).describe()
    assert a != other_names


# -------------------------------------------------------------------- the simplex parametrization

SEVEN = tuple("abcdefg")


def seven(merge: dict[str, Any]) -> SearchSpace:
    data = {
        "name": "simplex",
        "checkpoints": [f"pool/{x}" for x in SEVEN],
        "base_model": "pool/base",
        "merge": merge,
        "objectives": [{"name": "o", "tasks": [{"task": "t"}]}],
    }
    return SearchSpace.build(StudyConfig.model_validate(data), SEVEN)


def sampled_coefficients(space: SearchSpace, n: int, seed: int = 0) -> list[list[float]]:
    """Coefficients (layer group 0) of ``n`` plans drawn by Optuna's RandomSampler."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append([c[0] for c in effective_weights(space.suggest(trial))])
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize(
    ("merge", "expected"),
    [
        ({"method": "linear"}, "simplex"),
        ({"method": "ties"}, "simplex"),
        ({"method": "ties", "weights": {"normalize": False}}, "independent"),
        ({"method": "linear", "weights": {"normalize": False}}, "independent"),
        ({"method": "task_arithmetic"}, "independent"),
        ({"method": "linear", "weights": {"parametrization": "independent"}}, "independent"),
    ],
)
def test_simplex_is_the_default_of_methods_that_normalize(merge, expected) -> None:
    space = SearchSpace.build(config(merge), NAMES)
    assert space.parametrization == expected
    prefix = "u_" if expected == "simplex" else "w_"
    weights = [n for n in space.distributions() if n[:2] in ("u_", "w_")]
    assert weights == [f"{prefix}{x}" for x in NAMES]
    if expected == "simplex":
        assert all(space.distributions()[n].high == 1.0 for n in weights)
        assert all(0.0 < space.distributions()[n].low < 1e-9 for n in weights)


@pytest.mark.parametrize(
    ("merge", "words"),
    [
        (
            {"method": "task_arithmetic", "weights": {"parametrization": "simplex"}},
            "merge.weights.parametrization: simplex needs a method that normalizes",
        ),
        (
            {"method": "linear", "weights": {"normalize": False, "parametrization": "simplex"}},
            "method 'linear' with normalize: false does not: use independent",
        ),
        (
            {"method": "linear", "weights": {"high": 2.0}},
            "merge.weights.high: low/high bound independent weights only",
        ),
    ],
)
def test_simplex_is_refused_where_it_cannot_apply(merge, words) -> None:
    from search.errors import UserError
    from search.study.config import parse_config

    data = {
        "name": "space",
        "checkpoints": ["pool/a", "pool/b"],
        "base_model": "pool/base",
        "merge": merge,
        "objectives": [{"name": "o", "tasks": [{"task": "t"}]}],
    }
    with pytest.raises(UserError, match=words) as err:
        parse_config(data, "study.yaml")
    assert str(err.value).startswith("study.yaml: merge.weights.") and "\n" not in str(err.value)


def test_simplex_weights_are_uniform_on_the_simplex() -> None:
    """Each coefficient of a uniform point on the K-simplex is Beta(1, K-1): a KS test per
    checkpoint on 3,000 seeded draws (deterministic: the same draws on every run). The same
    test rejects K independent uniform weights divided by their sum (p < 1e-20)."""
    from scipy import stats

    beta = stats.beta(1, len(SEVEN) - 1).cdf
    simplex = sampled_coefficients(seven({"method": "linear"}), 3000)
    independent = sampled_coefficients(
        seven({"method": "linear", "weights": {"parametrization": "independent"}}), 3000
    )
    for i in range(len(SEVEN)):
        assert stats.kstest([c[i] for c in simplex], beta).pvalue > 0.001  # 7 tests: 1 % in all
        assert stats.kstest([c[i] for c in independent], beta).pvalue < 1e-20
    assert all(sum(c) == pytest.approx(1.0) for c in simplex)
    # what the search gains: mixtures leaning on one checkpoint are drawn (E[max] = 0.37 vs 0.26)
    lean = [sum(max(c) > 0.6 for c in draws) / len(draws) for draws in (simplex, independent)]
    assert lean[0] > 0.015 > 0.005 > lean[1]


def test_simplex_seed_trials_are_exactly_the_uniform_merge_and_each_single() -> None:
    space = seven({"method": "linear", "layer_groups": 2})
    seeds = dict(space.seed_trials(["uniform", "singles"]))
    assert set(seeds) == {"uniform", *(f"single:{x}" for x in SEVEN)}
    uniform = space.plan(seeds["uniform"])
    assert [c for row in effective_weights(uniform) for c in row] == pytest.approx([1 / 7] * 14)
    for i, name in enumerate(SEVEN):
        params = seeds[f"single:{name}"]
        assert all(0.0 < v <= 1.0 for v in params.values())
        plan = space.plan(params)
        for j, row in enumerate(plan.weights):
            assert row == ((1.0, 1.0) if j == i else (0.0, 0.0))  # 0.0 exactly, and not -0.0
            assert all(str(w) != "-0.0" for w in row)
        assert effective_weights(plan)[i] == [1.0, 1.0]
    study = optuna.create_study()  # the seed values are inside the distributions
    for _label, params in space.seed_trials(["uniform", "singles"]):
        study.enqueue_trial(params)
        trial = study.ask()
        plan = space.suggest(trial)
        assert plan == space.plan(params) == space.plan(trial.params)
        study.tell(trial, 0.0)


def test_simplex_layer_groups_are_normalized_each_on_its_own() -> None:
    space = seven({"method": "linear", "layer_groups": 3})
    assert len(space.distributions()) == 21 and "u_c_g2" in space.distributions()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    plan = space.suggest(trial)
    coefficients = effective_weights(plan)
    for g in range(3):
        assert sum(c[g] for c in coefficients) == pytest.approx(1.0)
        raw = [plan.weights[i][g] for i in range(7)]
        assert raw == [-math.log(trial.params[f"u_{x}_g{g}"]) for x in SEVEN]
        assert [c[g] for c in coefficients] == pytest.approx([w / sum(raw) for w in raw])


def test_recorded_coefficients_reproduce_the_merge(tiny_zoo: Any) -> None:
    """A simplex plan (weights -log u) and a linear plan of its recorded coefficients, not
    normalized, give the same tensors."""
    import torch

    from search.engine.materialize import materialize
    from search.engine.plan import MergePlan
    from search.engine.pool import CheckpointPool

    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base, device="cpu")
    pool.load()
    names = tuple(pool.names)
    data = {
        "name": "reproduce",
        "checkpoints": [str(p) for p in tiny_zoo.checkpoints],
        "merge": {"method": "linear", "layer_groups": 2},
        "objectives": [{"name": "o", "tasks": [{"task": "t"}]}],
    }
    space = SearchSpace.build(StudyConfig.model_validate(data), names)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5)).ask()
    plan = space.suggest(trial)
    coefficients = effective_weights(plan)
    model, _ = load_model(pool)
    materialize(plan, pool, model)
    merged = {k: v.detach().clone() for k, v in model.state_dict().items()}
    again = MergePlan.create("linear", coefficients, {"normalize": False})
    materialize(again, pool, model)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, merged[name], rtol=1e-5, atol=1e-6)
    assert MergePlan.from_dict(plan.to_dict()) == plan  # the plan alone reproduces the merge
