"""Fisher merging and the diagonal Fisher against independent float64 computations."""

from __future__ import annotations

import pytest
import torch

from search.calibration import ProxyExample, batches, tokenize
from search.engine.materialize import materialize as _materialize
from search.engine.materialize import merged_tensors as _merged_tensors
from search.engine.materialize import model_parameters
from search.engine.model import load_model
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.strategies import get_method, merge_methods
from search.strategies.fisher.cache import hold_fishers
from search.strategies.fisher.diagonal import diagonal_fisher
from search.strategies.fisher.merge import FISHER_CHUNK, FISHER_FLOOR, fisher_weighted_mean

METHODS = merge_methods()  # the built-in methods and those strategies provide


def merged_tensors(plan, pool, dtype=None):
    """The engine's merged_tensors with the plan's method looked up as the study does (methods
    that strategies provide included)."""
    return _merged_tensors(plan, pool, dtype, get_method(plan.method))


def materialize(plan, pool, model):
    return _materialize(plan, pool, model, get_method(plan.method))


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


def _as_checkpoint(pool, model, i):
    with torch.no_grad():
        for name, param in model_parameters(pool, model).items():
            param.copy_(pool.stack(name)[i])


def _hand_log_likelihood(model, ids, labels):
    """Σ log p(label_t | ids_<t) written out position by position (no gather, no mask)."""
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    total = torch.zeros((), dtype=torch.float64)
    for t in range(1, len(ids)):
        if labels[t] == -100:
            continue
        total = total + torch.log(torch.softmax(logits[t - 1], dim=-1)[labels[t]])
    return total


def test_fisher_is_the_mean_squared_per_example_gradient(pool64, model64):
    model, tok = model64
    _as_checkpoint(pool64, model, 1)
    params = model_parameters(pool64, model)
    tokenized = tokenize(TEXTS, tok, 64)
    fisher = diagonal_fisher(model, params, [batches([p], 1, 0)[0] for p in tokenized])

    names = list(params)
    squares = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    summed = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    for ids, labels in tokenized:
        grads = torch.autograd.grad(
            _hand_log_likelihood(model, ids, labels), [params[n] for n in names]
        )
        for n, g in zip(names, grads, strict=True):
            squares[n] += g.detach() ** 2
            summed[n] += g.detach()
    n_examples = len(tokenized)
    per_batch_differs = 0
    for n in names:
        expected = (squares[n] / n_examples).clamp_min(FISHER_FLOOR)
        torch.testing.assert_close(fisher[n].double(), expected, rtol=1e-9, atol=1e-12, msg=n)
        batch_version = (summed[n] ** 2 / n_examples).clamp_min(FISHER_FLOOR)
        per_batch_differs += not torch.allclose(batch_version, expected, rtol=1e-3)
    assert per_batch_differs > len(names) // 2  # squaring per-batch sums is another quantity
    assert all(float(f.min()) >= FISHER_FLOOR for f in fisher.values())
    assert all(p.grad is None for p in params.values())  # gradients cleared after


def test_fisher_refuses_batches_of_several_examples(pool64, model64):
    model, tok = model64
    with pytest.raises(ValueError, match="one example per batch"):
        diagonal_fisher(
            model, model_parameters(pool64, model), batches(tokenize(TEXTS, tok, 64), 4, 0)
        )


@pytest.fixture(scope="module")
def fisher_pool(tiny_zoo, pool64, model64):
    """A float64 pool with each checkpoint's real Fisher on TEXTS."""
    model, tok = model64
    examples = [batches([p], 1, 0)[0] for p in tokenize(TEXTS, tok, 64)]
    params = model_parameters(pool64, model)
    fishers = []
    for i in range(len(pool64.names)):
        _as_checkpoint(pool64, model, i)
        fishers.append(diagonal_fisher(model, params, examples))
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base, dtype="float64").load()
    return hold_fishers(pool, fishers, source={"data": "TEXTS"}), fishers


def test_fisher_merge_matches_a_float64_reference(fisher_pool):
    pool, fishers = fisher_pool
    weights = [[0.5, 0.1], [0.2, 0.7], [0.9, 0.3]]
    plan = MergePlan.create("fisher", weights)
    checked = 0
    for name, merged in merged_tensors(plan, pool):
        g = pool.group_of(name, 2)
        num = sum(weights[i][g] * fishers[i][name] * pool.stack(name)[i] for i in range(3))
        den = sum(weights[i][g] * fishers[i][name] for i in range(3))
        torch.testing.assert_close(merged, num / den, rtol=1e-12, atol=1e-14, msg=name)
        checked += 1
    assert checked == len(pool.tensor_names)
    # The Fishers matter: the result is not the normalized linear soup.
    linear = dict(merged_tensors(MergePlan.create("linear", weights), pool))
    name = "model.layers.1.mlp.up_proj.weight"
    assert not torch.allclose(dict(merged_tensors(plan, pool))[name], linear[name])


def test_with_equal_fishers_fisher_merging_is_the_normalized_linear_soup(tiny_zoo, fisher_pool):
    _, fishers = fisher_pool
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base, dtype="float64").load()
    hold_fishers(pool, [fishers[0]] * 3)
    weights = [[0.5, 0.1], [0.2, 0.7], [0.9, 0.3]]
    linear = dict(merged_tensors(MergePlan.create("linear", weights, {"normalize": True}), pool))
    for name, merged in merged_tensors(MergePlan.create("fisher", weights), pool):
        torch.testing.assert_close(merged, linear[name], rtol=1e-12, atol=1e-14, msg=name)


def test_fisher_kernel_over_several_blocks_leaves_its_inputs_unchanged():
    gen = torch.Generator().manual_seed(0)
    n = 2 * FISHER_CHUNK + 123
    stack = torch.randn(3, n, generator=gen)
    fisher = torch.rand(3, n, generator=gen)
    fisher[0, :10] = 0.0  # below the floor
    before = fisher.clone()
    weights = torch.tensor([0.2, 0.5, 0.3])
    out = torch.empty(n)
    fisher_weighted_mean(stack, fisher, weights, out)
    f = fisher.double().clamp_min(FISHER_FLOOR)
    w = weights.double()[:, None]
    expected = (w * f * stack.double()).sum(0) / (w * f).sum(0)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)  # float32 work
    assert torch.equal(fisher, before)


def test_fisher_needs_fishers_and_nonnegative_weights(tiny_zoo, fisher_pool):
    bare = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base)
    with pytest.raises(UserError, match="needs each checkpoint's Fisher"):
        next(merged_tensors(MergePlan.create("fisher", [1.0, 1.0, 1.0]), bare))
    pool, _ = fisher_pool
    with pytest.raises(UserError, match="weight below 0"):
        next(merged_tensors(MergePlan.create("fisher", [1.0, -0.5, 1.0]), pool))
    with pytest.raises(UserError, match="sum to 0"):
        next(merged_tensors(MergePlan.create("fisher", [0.0, 0.0, 0.0]), pool))


def test_the_pure_fisher_function_is_what_materialize_writes(fisher_pool):
    pool, _ = fisher_pool
    weights = torch.tensor([0.5, 0.2, 0.9], dtype=torch.float64)
    merged = dict(merged_tensors(MergePlan.create("fisher", weights.tolist()), pool))
    method = METHODS["fisher"]
    for name in pool.tensor_names:
        pure = method.merge(
            pool.stack(name), None, weights, {}, fisher=pool.extras("fisher").get(name)
        )
        torch.testing.assert_close(pure, merged[name], rtol=1e-12, atol=1e-14, msg=name)


@pytest.mark.parametrize("kernel", ["chunked", "compiled"])
def test_half_precision_fisher_kernels_accumulate_in_float32(tiny_zoo, fisher_pool, kernel):
    _, fishers = fisher_pool
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base, dtype="bfloat16", kernel=kernel)
    hold_fishers(pool, fishers)
    model, _ = load_model(pool, tokenizer=False)
    weights = [0.37, 0.21, 0.42]
    materialize(MergePlan.create("fisher", weights), pool, model)
    state = model.state_dict()
    for name in pool.tensor_names:
        xs = [pool.stack(name)[k].double() for k in range(3)]
        fs = [pool.extras("fisher").get(name)[k].double().clamp_min(FISHER_FLOOR) for k in range(3)]
        num = sum(w * f * x for w, f, x in zip(weights, fs, xs, strict=True))
        exact = num / sum(w * f for w, f in zip(weights, fs, strict=True))
        got = state[name]
        assert got.dtype == torch.bfloat16
        err = (got.double() - exact).abs()
        ulp = exact.abs().clamp_min(1e-30) * 2.0**-7  # one bf16 rounding of a float32 result
        assert (err <= ulp).all(), (name, float((err / ulp).max()))
    assert pool.fused_kernel("fisher", lambda: None).kind == kernel  # no fallback happened
