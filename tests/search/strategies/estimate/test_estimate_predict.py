"""Per-example prediction models and the shared design."""

from __future__ import annotations

import numpy as np
import pytest

from search.strategies.estimate import Design, History, build_model, example_order
from search.strategies.estimate.predict import entropy

K, N = 4, 120


def synthetic(seed: int = 0, trials: int = 30):
    """Inputs' 0/1 values and trials whose per-example probability is logistic in w."""
    rng = np.random.default_rng(seed)
    skill = rng.normal(0, 2, (K, N))  # each input's logit per example
    bonus = rng.normal(0.5, 1, N)  # merging helps some examples
    inputs = (rng.uniform(0, 1, (K, N)) < 1 / (1 + np.exp(-skill))).astype(float)

    def prob(w):
        return 1 / (1 + np.exp(-(w @ skill + bonus * entropy(w)[:, None])))

    w = rng.dirichlet(np.ones(K), trials)
    values = (rng.uniform(0, 1, (trials, N)) < prob(w)).astype(float)
    return inputs, History(w, values, np.ones_like(values, bool)), prob, rng


@pytest.mark.parametrize("name", ["mixture", "kernel", "logistic"])
def test_models_predict_probabilities_for_each_example(name):
    inputs, history, prob, rng = synthetic()
    model = build_model(name).fit(inputs, history)
    w = rng.dirichlet(np.ones(K), 5)
    p = model.predict(w)
    assert p.shape == (5, N) and (p >= 0).all() and (p <= 1).all()
    assert np.corrcoef(p.ravel(), prob(w).ravel())[0, 1] > 0.4


def test_fitted_models_beat_the_mixture_when_merges_differ_from_their_inputs():
    inputs, history, prob, rng = synthetic(1, trials=60)
    w = rng.dirichlet(np.ones(K), 20)
    truth = prob(w)
    err = {
        name: np.mean((build_model(name).fit(inputs, history).predict(w) - truth) ** 2)
        for name in ("mixture", "kernel", "logistic")
    }
    assert err["logistic"] < err["mixture"] and err["kernel"] < err["mixture"]


def test_mixture_at_an_input_is_that_input():
    inputs, history, _, _ = synthetic()
    p = build_model("mixture").fit(inputs, history).predict(np.eye(K)[2])
    assert np.array_equal(p[0], inputs[2])


def test_partial_rows_are_left_out_unless_asked():
    inputs, history, _, rng = synthetic()
    mask = history.mask.copy()
    mask[:, N // 2 :] = False  # every trial scored only the first half
    partial = History(history.weights, history.values, mask)
    w = rng.dirichlet(np.ones(K), 3)
    for name in ("kernel", "logistic"):
        alone = build_model(name).fit(inputs, History.empty(K, N)).predict(w)
        assert np.allclose(build_model(name).fit(inputs, partial).predict(w), alone)
        used = build_model(name, partial=True).fit(inputs, partial).predict(w)
        assert not np.allclose(used[:, : N // 2], alone[:, : N // 2])
        assert np.allclose(used[:, N // 2 :], alone[:, N // 2 :], atol=0.05)


def test_unknown_model():
    with pytest.raises(ValueError, match="estimate.model"):
        build_model("irt")


def test_design_orders_and_audits():
    order = example_order(50, "demo_code", 0)
    assert sorted(order) == list(range(50))
    assert np.array_equal(order, example_order(50, "demo_code", 0))
    assert not np.array_equal(order, example_order(50, "demo_instruct", 0))
    design = Design(seed=0, shared=10, audit=5)
    shared, audit = design.sample("demo_code", 50, trial=3)
    assert np.array_equal(shared, order[:10])
    assert len(audit) == 5 and not set(audit) & set(shared)
    again, audit_again = design.sample("demo_code", 50, trial=3)
    assert np.array_equal(audit, audit_again)
    assert not np.array_equal(audit, design.sample("demo_code", 50, trial=4)[1])
    more, rest = design.sample("demo_code", 50, trial=3, shared=48)
    assert np.array_equal(more, order[:48]) and len(rest) == 2
    with pytest.raises(ValueError, match="design"):
        Design(seed=0, shared=-1)
