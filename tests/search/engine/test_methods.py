"""Merge methods against independent float64 references, plus a contract suite over METHODS."""

from __future__ import annotations

import math

import pytest
import torch

from search.engine.materialize import effective_weights, tensor_seed
from search.engine.materialize import merged_tensors as _merged_tensors
from search.engine.methods import SLERP_DOT_THRESHOLD
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.strategies import get_method, merge_methods
from tests.search.engine.extras_fixtures import hold_extras

METHODS = merge_methods()  # the built-in methods and those strategies provide


def merged_tensors(plan, pool, dtype=None):
    """The engine's merged_tensors with the plan's method looked up as the study does (methods
    that strategies provide included)."""
    return _merged_tensors(plan, pool, dtype, get_method(plan.method))


# ---------------------------------------------------------------------------------------------
# Float64 references: written from the definitions (NOTES.md), one checkpoint at a time.


def ref_linear(xs, ws, normalize):
    total = sum(ws)
    out = torch.zeros_like(xs[0])
    for x, w in zip(xs, ws, strict=True):
        out += (w / total if normalize else w) * x
    return out


def ref_task_arithmetic(xs, base, ws, lam):
    out = base.clone()
    for x, w in zip(xs, ws, strict=True):
        out += lam * w * (x - base)
    return out


def ref_trim_top(tau, density):
    """Keep the max(1, int(density·n)) largest |entries|."""
    if density >= 1:
        return tau
    keep = max(1, int(density * tau.numel()))
    threshold = tau.abs().flatten().sort(descending=True).values[keep - 1]
    return torch.where(tau.abs() >= threshold, tau, 0.0)


def ref_band(tau, density, gamma):
    """Drop the int(gamma·n) largest and the smallest entries, keeping int(density·n)."""
    if density >= 1:
        return tau
    n = tau.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    rank = tau.abs().flatten().argsort().argsort().reshape(tau.shape)  # 0 = smallest
    return torch.where((rank >= bottom) & (rank < bottom + keep), tau, 0.0)


def ref_dare(tau, density, draws):
    if density >= 1:
        return tau
    return torch.where(draws < density, tau / density, 0.0)


def ref_task_vectors(xs, base, ws, lam, trim, elect, normalize):
    taus = [w * trim(k, x - base) for k, (x, w) in enumerate(zip(xs, ws, strict=True))]
    if not elect:
        return base + lam * sum(taus)
    elected = torch.where(sum(taus) >= 0, 1.0, -1.0)
    kept = torch.zeros_like(base)
    agreeing_weight = torch.zeros_like(base)
    for tau, w in zip(taus, ws, strict=True):
        agree = (torch.sign(tau) == elected).double()
        kept += tau * agree
        agreeing_weight += w * agree
    if normalize:
        kept = kept / torch.where(agreeing_weight == 0, 1.0, agreeing_weight)
    return base + lam * kept


def ref_slerp(a, b, t):
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    if abs(cos) > SLERP_DOT_THRESHOLD:
        return (1 - t) * a + t * b
    theta = math.acos(cos)
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def reference(method, xs, base, ws, params, name, seed):
    p = params
    if method == "linear":
        return ref_linear(xs, ws, p["normalize"])
    if method == "task_arithmetic":
        return ref_task_arithmetic(xs, base, ws, p["lambda"])
    if method == "slerp":
        return ref_slerp(xs[0], xs[1], p["t"])
    if method in ("ties",):
        trim = lambda k, tau: ref_trim_top(tau, p["density"])  # noqa: E731
    elif method == "breadcrumbs":
        trim = lambda k, tau: ref_band(tau, p["density"], p["gamma"])  # noqa: E731
    else:  # DARE: the same uniform draws as the method, one [K, n] matrix per tensor
        gen = torch.Generator().manual_seed(tensor_seed(seed, name))
        draws = torch.rand((len(xs), xs[0].numel()), generator=gen)
        trim = lambda k, tau: ref_dare(tau, p["density"], draws[k].reshape(tau.shape).double())  # noqa: E731
    elect = method in ("ties", "dare_ties")
    normalize = p.get("normalize", False)
    return ref_task_vectors(xs, base, ws, p["lambda"], trim, elect, normalize)


CASES = [
    ("linear", {"normalize": True}),
    ("linear", {"normalize": False}),
    ("task_arithmetic", {"lambda": 0.8}),
    ("ties", {"density": 0.3, "lambda": 1.2, "normalize": True}),
    ("ties", {"density": 0.6, "lambda": 1.0, "normalize": False}),
    ("dare_linear", {"density": 0.4, "lambda": 0.9}),
    ("dare_ties", {"density": 0.5, "lambda": 1.0}),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.05, "lambda": 1.0}),
    ("slerp", {"t": 0.3}),
]


@pytest.fixture(scope="module")
def pool64(tiny_zoo):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base, dtype="float64")
    return pool.load(base=True)


def _f64_inputs(pool, name, n):
    return [pool.stack(name)[k].double() for k in range(n)], pool.base_tensor(name).double()


@pytest.mark.parametrize(
    ("method", "params"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)]
)
def test_method_matches_float64_reference(pool64, tiny_zoo, method, params):
    n = METHODS[method].n_checkpoints or 3
    pool = (
        pool64
        if n == 3
        else CheckpointPool.open(tiny_zoo.checkpoints[:n], tiny_zoo.base, dtype="float64")
    )
    ws = [0.5, -0.2, 0.9][:n]
    plan = MergePlan.create(method, ws, params, seed=7)
    checked = 0
    for name, merged in merged_tensors(plan, pool):
        xs, base = _f64_inputs(pool, name, n)
        expected = reference(method, xs, base, ws, params, name, seed=7)
        torch.testing.assert_close(merged, expected, rtol=1e-12, atol=1e-12, msg=f"{method} {name}")
        checked += 1
    assert checked == len(pool.tensor_names) > 20


def test_ties_trim_and_election_are_exercised(pool64):
    """The TIES case above is not trivially linear: trimming and sign election change entries."""
    name = "model.layers.1.mlp.up_proj.weight"
    xs, base = _f64_inputs(pool64, name, 3)
    ws = [0.5, -0.2, 0.9]
    ties = reference(
        "ties", xs, base, ws, {"density": 0.3, "lambda": 1.0, "normalize": False}, name, 0
    )
    plain = ref_task_arithmetic(xs, base, ws, 1.0)
    assert (ties != plain).float().mean() > 0.5


def test_slerp_endpoints_and_parallel_fallback(tiny_zoo):
    pool = CheckpointPool.open(tiny_zoo.checkpoints[:2], dtype="float64")
    for t, k in ((0.0, 0), (1.0, 1)):
        for name, merged in merged_tensors(MergePlan.create("slerp", [1, 1], {"t": t}), pool):
            torch.testing.assert_close(merged, pool.stack(name)[k], rtol=1e-12, atol=1e-12)
    parallel = torch.stack([torch.arange(1.0, 7.0), 2 * torch.arange(1.0, 7.0)]).double()
    out = METHODS["slerp"].merge(parallel, None, torch.ones(2), {"t": 0.25})
    torch.testing.assert_close(out, 0.75 * parallel[0] + 0.25 * parallel[1])
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    out = METHODS["slerp"].merge(orthogonal, None, torch.ones(2), {"t": 0.5})
    torch.testing.assert_close(out, torch.tensor([math.sqrt(0.5)] * 2, dtype=torch.float64))


def test_dare_is_seeded_per_tensor_and_keeps_density(pool64):
    plan = MergePlan.create("dare_linear", [1.0, 1.0, 1.0], {"density": 0.3, "lambda": 1.0}, seed=3)
    first = dict(merged_tensors(plan, pool64))
    again = dict(merged_tensors(plan, pool64))
    other_seed = dict(
        merged_tensors(MergePlan.create("dare_linear", [1.0] * 3, {"density": 0.3}, seed=4), pool64)
    )
    name = "model.layers.2.mlp.down_proj.weight"
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not torch.equal(first[name], other_seed[name])
    # Order independence: merging one tensor alone gives the same result (seed from plan + name).
    from search.engine.materialize import merge_into, resolve

    alone = torch.empty_like(first[name])
    merge_into(resolve(plan, pool64), pool64, {name: alone})
    assert torch.equal(alone, first[name])
    # About density of each task vector survives, scaled by 1/density.
    single = CheckpointPool.open([pool64.paths[0]], pool64.base_path, dtype="float64")
    plan1 = MergePlan.create("dare_linear", [1.0], {"density": 0.3, "lambda": 1.0}, seed=3)
    merged = dict(merged_tensors(plan1, single))[name]
    tau = single.stack(name)[0] - single.base_tensor(name)
    kept = (merged - single.base_tensor(name)).abs() > 1e-15
    assert 0.25 < kept.double().mean() < 0.35
    torch.testing.assert_close((merged - single.base_tensor(name))[kept], tau[kept] / 0.3)


def test_effective_weights_report_applied_coefficients():
    plan = MergePlan.create("linear", [[1.0, 3.0], [3.0, 1.0]], {"normalize": True})
    assert effective_weights(plan) == [[0.25, 0.75], [0.75, 0.25]]
    plan = MergePlan.create("task_arithmetic", [0.5, 0.25], {"lambda": 2.0})
    assert effective_weights(plan) == [[1.0], [0.5]]
    assert effective_weights(MergePlan.create("slerp", [1.0, 1.0], {"t": 0.25})) == [[0.75], [0.25]]


def test_normalized_weights_summing_to_zero_is_an_error(tiny_zoo):
    pool = CheckpointPool.open(tiny_zoo.checkpoints[:2])
    plan = MergePlan.create("linear", [[0.5, 1.0], [-0.5, 1.0]], {"normalize": True})
    with pytest.raises(UserError, match="layer group 0 sum to 0"):
        next(merged_tensors(plan, pool))
    unnormalized = MergePlan.create("linear", [0.5, -0.5], {"normalize": False})
    name, merged = next(merged_tensors(unnormalized, pool))
    torch.testing.assert_close(merged, 0.5 * (pool.stack(name)[0] - pool.stack(name)[1]))


def test_unknown_method_lists_supported_names():
    with pytest.raises(UserError) as info:
        get_method("fisher_soup")
    assert all(name in str(info.value) for name in METHODS)


# ---------------------------------------------------------------------------------------------
# Contract suite: every registered method keeps these rules.


@pytest.fixture(scope="module")
def contract_pools(tiny_zoo):
    """Pools of 2 and 3 checkpoints holding the extras of every method that reads them (made
    from real calibration texts)."""
    pools = {n: CheckpointPool.open(tiny_zoo.checkpoints[:n], tiny_zoo.base) for n in (2, 3)}
    for pool in pools.values():
        for method in METHODS.values():
            hold_extras(pool, method)
    return pools


def _plan(method, params, seed=0):
    n = method.n_checkpoints or 3
    return MergePlan.create(
        method.name, [[0.6, 0.3], [0.3, 0.5], [0.4, 0.2]][:n], params, seed=seed
    )


@pytest.fixture(params=sorted(METHODS))
def method(request):
    return METHODS[request.param]


def test_contract_declaration(method):
    assert method.name and method.doc
    names = [p.name for p in method.params]
    assert len(names) == len(set(names))
    for spec in method.params:
        assert spec.kind in ("float", "bool", "int")
        assert spec.check(spec.default) == spec.default
        if spec.kind != "bool":
            assert (
                spec.low is not None
                and spec.high is not None
                and spec.low <= spec.default <= spec.high
            )
    assert method.n_checkpoints in (None, 2)


def test_contract_declared_weight_use_matches_the_coefficients(method):
    """``uses_weights`` is declared; the reported coefficients must agree with it."""
    params = method.resolve_params({})
    k = method.n_checkpoints or 3
    a = method.coefficients([1.0, 2.0, 3.0][:k], params)
    b = method.coefficients([3.0, 1.0, 2.0][:k], params)
    assert (list(a) != list(b)) == method.uses_weights


def test_contract_declarations_import_no_torch():
    """The registry is data: config validation and the mergekit writer need no tensor library."""
    import subprocess
    import sys

    code = (
        "import sys; import search.engine.registry as r; r.METHODS['ties'].resolve_params({}); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_contract_deterministic_shape_preserving_finite(method, contract_pools):
    pool = contract_pools[method.n_checkpoints or 3]
    plan = _plan(method, {}, seed=5)
    first = dict(merged_tensors(plan, pool))
    second = dict(merged_tensors(plan, pool))
    assert list(first) == list(pool.tensor_names)
    for name, tensor in first.items():
        assert tensor.shape == pool.shapes[name]
        assert tensor.dtype == pool.dtype
        assert torch.isfinite(tensor).all()
        assert torch.equal(tensor, second[name])


def test_contract_declared_range_ends_work(method, contract_pools):
    pool = contract_pools[method.n_checkpoints or 3]
    for spec in method.params:
        values = (True, False) if spec.kind == "bool" else (spec.low, spec.high)
        for value in values:
            for name, tensor in merged_tensors(_plan(method, {spec.name: value}), pool):
                assert torch.isfinite(tensor).all(), (spec.name, value, name)


def test_contract_bad_params_are_user_errors(method, contract_pools):
    pool = contract_pools[method.n_checkpoints or 3]
    with pytest.raises(UserError, match="unknown parameter"):
        next(merged_tensors(_plan(method, {"no_such_param": 1.0}), pool))
    for spec in method.params:
        bad = 2.0 if spec.kind == "bool" else spec.high + 1.0
        with pytest.raises(UserError, match=spec.name):
            next(merged_tensors(_plan(method, {spec.name: bad}), pool))


def test_contract_checkpoint_count_and_base_are_checked(method, tiny_zoo):
    if method.n_checkpoints is not None:
        pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base)
        with pytest.raises(UserError, match="exactly"):
            next(merged_tensors(MergePlan.create(method.name, [1.0] * 3), pool))
    if method.needs_base:
        pool = CheckpointPool.open(tiny_zoo.checkpoints)
        with pytest.raises(UserError, match="base"):
            next(merged_tensors(_plan(method, {}), pool))
