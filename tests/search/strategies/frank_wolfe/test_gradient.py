"""The Frank-Wolfe proxy loss's gradient in the merge coefficients against finite differences."""

from __future__ import annotations

import pytest
import torch

from search.calibration import ProxyExample, batches, tokenize
from search.engine.materialize import materialize, model_parameters
from search.engine.model import load_model
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.strategies.frank_wolfe.gradient import coefficient_gradient, mean_token_nll

TEXTS = [
    ProxyExample("", "the cat sat."),
    ProxyExample("1+2=", "3"),
    ProxyExample("reverse: abc?", " cba"),
    ProxyExample("", "a=4;b=a+3;print(b)? 7"),
]


@pytest.fixture(scope="module")
def pool64(tiny_zoo):
    return CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base, dtype="float64").load()


@pytest.fixture(scope="module")
def model64(pool64):
    return load_model(pool64)


def test_coefficient_gradient_equals_central_finite_differences(pool64, model64):
    """∂L/∂c_{i,g} = Σ_t ⟨∂L/∂θ_t, θ_{i,t}⟩ against central differences of L, float64.

    transformers' Llama computes RMSNorm variances and attention softmaxes in float32 even in a
    float64 model, so L carries ~1e-7 relative rounding noise: the differences use a wide step
    with Richardson extrapolation, (4·D(h) − D(2h)) / 3, O(h⁴) and little noise.
    """
    model, tok = model64
    parts = [
        (0.7, batches(tokenize(TEXTS[:2], tok, 64), 2, 0)),
        (0.3, batches(tokenize(TEXTS[2:], tok, 64), 1, 0)),
    ]
    coeffs = torch.tensor([[0.2, 0.5], [0.3, 0.1], [0.5, 0.4]], dtype=torch.float64)
    params = model_parameters(pool64, model)

    def loss(c, backward=False):
        materialize(MergePlan.create("linear", c.tolist(), {"normalize": False}), pool64, model)
        return mean_token_nll(model, parts, backward=backward)

    model.zero_grad(set_to_none=True)
    loss(coeffs, backward=True)
    analytic = coefficient_gradient(pool64, params, 2)
    model.zero_grad(set_to_none=True)

    def central(h):
        out = torch.zeros_like(coeffs)
        for i in range(3):
            for g in range(2):
                step = torch.zeros_like(coeffs)
                step[i, g] = h
                out[i, g] = (loss(coeffs + step) - loss(coeffs - step)) / (2 * h)
        return out

    numeric = (4 * central(5e-3) - central(1e-2)) / 3
    torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=1e-6)
    assert analytic.abs().min() > 1e-3  # every component is exercised
