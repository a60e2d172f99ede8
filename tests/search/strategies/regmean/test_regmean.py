"""RegMean against a float64 reference written from the formula, its sanity cases, its Grams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search.calibration import Calibration, ProxyExample, tokenize
from search.engine.materialize import merged_tensors as _merged_tensors
from search.engine.materialize import model_parameters
from search.engine.model import load_model
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.strategies import get_method
from search.strategies.regmean.cache import hold_grams, load_grams
from search.strategies.regmean.merge import RIDGE, regmean_linear

# Enough positions (characters: the tiny tokenizer reads one per token) for every Gram to be
# full rank: ~150 positions for at most 64 input features.
TEXTS = [
    ProxyExample("", "the cat sat on the mat and then it ran away."),
    ProxyExample("1+2=", "3; 4+5=9; 7+1=8"),
    ProxyExample("reverse: abcdef?", " fedcba"),
    ProxyExample("", "a=4;b=a+3;print(b)? 7 and c=b*2 gives 14."),
]
WEIGHTS = [[0.5, 0.1], [0.2, 0.7], [0.9, 0.3]]  # two layer groups


def merged(plan, pool):
    return dict(_merged_tensors(plan, pool, None, get_method(plan.method)))


@pytest.fixture(scope="module")
def data():
    return Calibration.of("test", TEXTS, "test")


@pytest.fixture(scope="module")
def reference_grams(tiny_zoo):
    """Each checkpoint's G_i = X_iᵀX_i per linear layer of the blocks, in float64, from hooks
    written here: one example per forward pass (no padding), every position, summed (not
    averaged: a factor common to all checkpoints must cancel)."""
    pool = CheckpointPool.open(tiny_zoo.checkpoints, dtype="float64").load()
    model, tok = load_model(pool)
    params = model_parameters(pool, model)
    names = {id(p): n for n, p in params.items()}
    layers = {
        names[id(m.weight)]: m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in names.get(id(m.weight), "")
    }
    assert len(layers) == 4 * 7  # q k v o gate up down in each of the four blocks
    tokenized = tokenize(TEXTS, tok, 64)
    grams = []
    for i in range(len(pool.names)):
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(pool.stack(name)[i])
        xs: dict[str, list[np.ndarray]] = {n: [] for n in layers}
        handles = [
            m.register_forward_pre_hook(
                lambda mod, args, seen=xs[n]: seen.append(args[0][0].detach().numpy().copy())
            )
            for n, m in layers.items()
        ]
        with torch.no_grad():
            for ids, _ in tokenized:
                model(input_ids=torch.tensor([ids]))
        for h in handles:
            h.remove()
        grams.append({n: (x := np.concatenate(v)).T @ x for n, v in xs.items()})
    return grams


def reference_merge(pool, grams, weights, alpha):
    """RegMean in float64 numpy, straight from the formula, tensor by tensor; and the condition
    number of each linear layer's Σ w_i G̃_i (1 for the averaged tensors)."""
    out, cond = {}, {}
    k = len(pool.names)
    for name in pool.tensor_names:
        g = pool.group_of(name, len(weights[0]))
        w = [weights[i][g] for i in range(k)]
        thetas = [pool.stack(name)[i].double().numpy() for i in range(k)]
        if name in grams[0]:
            scaled = [
                alpha * G + (1 - alpha) * np.diag(np.diag(G)) for G in (x[name] for x in grams)
            ]
            a = sum(wi * G for wi, G in zip(w, scaled, strict=True))
            b = sum(wi * G @ t.T for wi, G, t in zip(w, scaled, thetas, strict=True))
            out[name] = np.linalg.solve(a, b).T
            cond[name] = float(np.linalg.cond(a))
        else:
            out[name] = sum(wi * t for wi, t in zip(w, thetas, strict=True)) / sum(w)
            cond[name] = 1.0
    return out, cond


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_regmean_matches_a_float64_reference(tiny_zoo, data, reference_grams, dtype, alpha):
    """float64: equal to rounding. float32: the Grams carry a few float32 roundings (relative
    ~3e-7) and the solve multiplies that by cond(Σ w_i G̃_i) at most (perturbation bound), so
    the relative error is held to 10 × eps32 × cond + 1e-6 (o_proj's cond is ~2e4 here)."""
    pool = CheckpointPool.open(tiny_zoo.checkpoints, dtype=dtype).load()
    done = load_grams(pool, data, None, progress=False)  # the strategy's own hooks, batched
    assert done.layers == 28 and set(done.computed) == set(pool.names)
    got = merged(MergePlan.create("regmean", WEIGHTS, {"alpha": alpha}), pool)
    expected, cond = reference_merge(pool, reference_grams, WEIGHTS, alpha)
    eps = 1e-13 if dtype == "float64" else float(torch.finfo(torch.float32).eps)
    assert list(got) == list(pool.tensor_names)
    for name, tensor in got.items():
        assert tensor.dtype == pool.dtype
        ref = torch.from_numpy(expected[name])
        err = float((tensor.double() - ref).norm() / ref.norm())
        assert err < 10 * eps * cond[name] + (1e-6 if dtype == "float32" else 1e-12), (name, err)
    # RegMean moves the linear layers away from the weighted mean; the rest is the mean
    linear = merged(MergePlan.create("linear", WEIGHTS, {"normalize": True}), pool)
    name = "model.layers.1.mlp.down_proj.weight"
    assert float((got[name] - linear[name]).norm() / linear[name].norm()) > 1e-2
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        torch.testing.assert_close(got[name], linear[name], msg=name)


def test_grams_are_the_inputs_gram_averaged_over_unpadded_positions(
    tiny_zoo, data, reference_grams
):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, dtype="float64").load()
    load_grams(pool, data, None, progress=False)
    positions = sum(len(ids) for ids, _ in tokenize(TEXTS, load_model(pool)[1], 64))
    held = pool.extras("gram")
    assert held.get("model.norm.weight") is None  # only the linear layers have Grams
    for name, gram in reference_grams[1].items():
        torch.testing.assert_close(
            held.get(name)[1], torch.from_numpy(gram) / positions, rtol=1e-10, atol=1e-12
        )


@pytest.fixture(scope="module")
def grams32(tiny_zoo, data):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, dtype="float32").load()
    load_grams(pool, data, None, progress=False)
    held = pool.extras("gram")
    names = list(held.stacks)
    return [{n: held.get(n)[i].clone() for n in names} for i in range(3)]


def test_alpha_zero_is_a_per_input_feature_weighted_mean(tiny_zoo, grams32):
    pool = hold_grams(CheckpointPool.open(tiny_zoo.checkpoints, dtype="float32").load(), grams32)
    got = merged(MergePlan.create("regmean", [0.5, 0.2, 0.9], {"alpha": 0.0}), pool)
    w = torch.tensor([0.5, 0.2, 0.9], dtype=torch.float64)
    for name in grams32[0]:
        d = torch.stack([torch.diagonal(g[name]).double() for g in grams32])  # [K, in]
        stack = pool.stack(name).double()  # [K, out, in]
        expected = (w[:, None, None] * d[:, None, :] * stack).sum(0) / (w[:, None] * d).sum(0)
        torch.testing.assert_close(got[name].double(), expected, rtol=1e-5, atol=1e-6, msg=name)


def test_a_single_checkpoint_merges_to_itself(tiny_zoo, data):
    pool = CheckpointPool.open(tiny_zoo.checkpoints[:1], dtype="float64").load()
    load_grams(pool, data, None, progress=False)
    for name, tensor in merged(MergePlan.create("regmean", [0.7], {"alpha": 0.8}), pool).items():
        torch.testing.assert_close(tensor, pool.stack(name)[0], rtol=1e-9, atol=1e-11, msg=name)


def test_equal_grams_give_the_normalized_linear_soup(tiny_zoo, grams32):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, dtype="float64").load()
    hold_grams(pool, [grams32[2]] * 3)
    linear = merged(MergePlan.create("linear", WEIGHTS, {"normalize": True}), pool)
    for name, tensor in merged(MergePlan.create("regmean", WEIGHTS, {"alpha": 0.5}), pool).items():
        torch.testing.assert_close(tensor, linear[name], rtol=1e-8, atol=1e-10, msg=name)


def test_a_feature_no_data_reaches_keeps_the_weighted_mean():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 6, generator=gen, dtype=torch.float64)
    x[:, :, 2] = 0.0  # input feature 2 is zero in every checkpoint's data
    grams = x.transpose(1, 2) @ x
    weight = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    out = regmean_linear(weight, grams, w, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 2], (w[:, None] * weight[:, :, 2]).sum(0))
    # the other features: the ridge (RIDGE × the mean diagonal) barely moves the exact solution
    keep = [0, 1, 3, 4, 5]
    a = (w[:, None, None] * grams).sum(0)[keep][:, keep]
    b = (w[:, None, None] * grams @ weight.transpose(1, 2)).sum(0)[keep]
    exact = torch.linalg.solve(a, b).T
    torch.testing.assert_close(out[:, keep], exact, rtol=100 * RIDGE, atol=100 * RIDGE)


def test_regmean_needs_grams_and_nonnegative_weights(tiny_zoo, grams32):
    bare = CheckpointPool.open(tiny_zoo.checkpoints)
    with pytest.raises(UserError, match="needs each checkpoint's Gram matrices"):
        merged(MergePlan.create("regmean", [1.0, 1.0, 1.0]), bare)
    pool = hold_grams(CheckpointPool.open(tiny_zoo.checkpoints).load(), grams32)
    with pytest.raises(UserError, match="weight below 0"):
        merged(MergePlan.create("regmean", [1.0, -0.5, 1.0]), pool)
    with pytest.raises(UserError, match="sum to 0"):
        merged(MergePlan.create("regmean", [0.0, 0.0, 0.0]), pool)
    with pytest.raises(UserError, match=r"alpha: expected a value in \[0.0, 1.0\]"):
        merged(MergePlan.create("regmean", [1.0, 1.0, 1.0], {"alpha": 1.5}), pool)
