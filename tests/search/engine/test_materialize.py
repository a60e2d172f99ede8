"""materialize: in place into the resident model, layer groups, tied weights, kernels, checks."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch

from search.engine.materialize import materialize, merged_tensors
from search.engine.model import load_model
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.errors import UserError


def _group(name: str, n_groups: int, n_layers: int) -> int:
    """Layer group by the rule in the README, written out independently."""
    m = re.search(r"\.layers\.(\d+)\.", name)
    if m:
        return int(m.group(1)) * n_groups // n_layers
    return 0 if "embed_tokens" in name else n_groups - 1


@pytest.fixture(scope="module")
def pool(tiny_zoo):
    return CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base)


@pytest.fixture(scope="module")
def resident(pool):
    model, _ = load_model(pool, tokenizer=False)
    return model


def test_materialize_writes_in_place_into_the_same_storage(pool, resident, tiny_zoo):
    base_file = tiny_zoo.base / "model.safetensors"  # the resident model was loaded from it
    on_disk = hashlib.sha256(base_file.read_bytes()).hexdigest()
    params = dict(resident.named_parameters())
    pointers = {n: p.data_ptr() for n, p in params.items()}
    ids = torch.tensor([[1, 4, 5, 6, 7]])
    with torch.no_grad():
        before = resident(ids).logits.clone()
    plan = MergePlan.create("linear", [0.2, 0.5, 0.3])
    materialize(plan, pool, resident)
    assert {n: p.data_ptr() for n, p in resident.named_parameters()} == pointers
    state = resident.state_dict()
    for name, merged in merged_tensors(plan, pool):
        assert torch.equal(state[name], merged)
    with torch.no_grad():
        assert not torch.allclose(resident(ids).logits, before)
    assert hashlib.sha256(base_file.read_bytes()).hexdigest() == on_disk


def test_layer_groups_get_their_own_weights(pool, resident, tiny_zoo):
    rows = [[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.25], [0.0, 0.0, 1.0, 0.25]]
    materialize(MergePlan.create("linear", rows, {"normalize": False}), pool, resident)
    state = resident.state_dict()
    for name in pool.tensor_names:
        g = _group(name, 4, tiny_zoo.n_layers)
        expected = sum(rows[k][g] * pool.stack(name)[k].double() for k in range(3))
        torch.testing.assert_close(state[name].double(), expected, rtol=1e-6, atol=1e-7, msg=name)
    # embeddings follow group 0 (checkpoint 0 alone), lm_head the last group
    assert torch.equal(
        state["model.embed_tokens.weight"], pool.stack("model.embed_tokens.weight")[0]
    )


def test_task_arithmetic_goes_through_the_fused_kernel_with_the_base(pool, resident):
    plan = MergePlan.create("task_arithmetic", [0.5, 0.3, 0.2], {"lambda": 0.7})
    materialize(plan, pool, resident)
    state = resident.state_dict()
    for name in pool.tensor_names:
        base = pool.base_tensor(name).double()
        expected = base + 0.7 * sum(
            w * (pool.stack(name)[k].double() - base) for k, w in enumerate((0.5, 0.3, 0.2))
        )
        torch.testing.assert_close(state[name].double(), expected, rtol=1e-6, atol=1e-6, msg=name)


def test_tied_embeddings_are_written_once_through_the_stored_name(tiny_tied_zoo):
    pool = CheckpointPool.open(tiny_tied_zoo.checkpoints, tiny_tied_zoo.base)
    assert "lm_head.weight" not in pool.tensor_names
    model, _ = load_model(pool, tokenizer=False)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    materialize(MergePlan.create("linear", [1.0, 2.0, 1.0]), pool, model)
    expected = (
        pool.stack("model.embed_tokens.weight").double()
        * torch.tensor([0.25, 0.5, 0.25]).double()[:, None, None]
    ).sum(0)
    torch.testing.assert_close(model.lm_head.weight.double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel", ["chunked", "compiled"])
def test_half_precision_kernels_accumulate_in_float32(tiny_zoo, kernel):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base, dtype="bfloat16", kernel=kernel)
    model, _ = load_model(pool, tokenizer=False)
    weights = [0.37, 0.21, 0.42]
    for method, params in (("linear", {"normalize": False}), ("task_arithmetic", {"lambda": 1.1})):
        materialize(MergePlan.create(method, weights, params), pool, model)
        state = model.state_dict()
        for name in pool.tensor_names:
            xs = [pool.stack(name)[k].double() for k in range(3)]
            if method == "linear":
                exact = sum(w * x for w, x in zip(weights, xs, strict=True))
            else:
                base = pool.base_tensor(name).double()
                exact = base + 1.1 * sum(w * (x - base) for w, x in zip(weights, xs, strict=True))
            got = state[name]
            assert got.dtype == torch.bfloat16
            # float32 accumulation: at most one bf16 rounding away from the exact float64 value
            err = (got.double() - exact).abs()
            ulp = exact.abs().clamp_min(1e-30) * 2.0**-7
            assert (err <= ulp).all(), (method, name, float((err / ulp).max()))
            assert (got == exact.bfloat16()).double().mean() > 0.99
    assert pool.weighted_sum.kind == kernel


def test_plan_pool_mismatches_are_user_errors(pool, resident, tiny_zoo):
    with pytest.raises(UserError, match="3 checkpoints"):
        materialize(MergePlan.create("linear", [1.0, 1.0]), pool, resident)
    with pytest.raises(UserError, match="layer groups"):
        materialize(MergePlan.create("linear", [[1.0] * 5] * 3), pool, resident)
    with pytest.raises(UserError, match="exactly 2"):
        materialize(MergePlan.create("slerp", [1.0] * 3), pool, resident)
    no_base = CheckpointPool.open(tiny_zoo.checkpoints)
    with pytest.raises(UserError, match="needs a base"):
        materialize(MergePlan.create("ties", [1.0] * 3), no_base, resident)


def test_model_that_does_not_fit_the_pool_is_refused(pool, tiny_zoo, tmp_path, checkpoint_writer):
    checkpoint_writer(tmp_path / "wide", seed=1, intermediate_size=48)
    other = CheckpointPool.open([tmp_path / "wide"])
    wide_model, _ = load_model(other, tokenizer=False)
    with pytest.raises(UserError, match=r"shape \[32, 48\]"):
        materialize(MergePlan.create("linear", [1.0, 1.0, 1.0]), pool, wide_model)
