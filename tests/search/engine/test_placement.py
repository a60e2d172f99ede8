"""Placements: every one merges to the same bits, the stores keep their contract, ``auto``'s rule.

The contract suite runs over every placement (``device``, ``host``, ``disk``) on the CPU, and on
CUDA when there is one; bit-identity is checked for every registered method and every dtype.
"""

from __future__ import annotations

import os

import pytest
import torch

from search.engine import extras
from search.engine.files import read_table
from search.engine.materialize import materialize as _materialize
from search.engine.materialize import merged_tensors as _merged_tensors
from search.engine.model import load_model
from search.engine.placement import (
    ALIGN,
    MARGIN,
    PoolSizes,
    build_store,
    choose_placement,
    free_after_reserve,
    split_ranges,
)
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.strategies import get_method, merge_methods
from tests.checkpoint_files import read_tensors
from tests.search.engine.extras_fixtures import hold_extras

METHODS = merge_methods()  # the built-in methods and those strategies provide


def merged_tensors(plan, pool, dtype=None):
    """The engine's merged_tensors with the plan's method looked up as the study does (methods
    that strategies provide included)."""
    return _merged_tensors(plan, pool, dtype, get_method(plan.method))


def materialize(plan, pool, model):
    return _materialize(plan, pool, model, get_method(plan.method))


PLACEMENTS = ("device", "host", "disk")
DTYPES = ("float32", "bfloat16", "float16")
SMALL_BLOCKS = 1536  # bytes per block's K slices: the tiny tensors (1-2 k elements) are split
GB = 1e9


def _plan(method: str) -> MergePlan:
    spec = METHODS[method]
    n = spec.n_checkpoints or 3
    params = {p.name: p.default for p in spec.params}
    if "density" in params:
        params["density"] = 0.4
    if "t" in params:
        params["t"] = 0.3
    weights = [0.5, -0.2, 0.9] if spec.min_weight is None else [0.5, 0.2, 0.9]
    return MergePlan.create(method, weights[:n], params, seed=5)


def _pool(zoo, method: str, dtype: str, placement: str, device: str = "cpu") -> CheckpointPool:
    n = METHODS[method].n_checkpoints or 3
    pool = CheckpointPool.open(
        zoo.checkpoints[:n],
        zoo.base,
        device=device,
        dtype=dtype,
        placement=placement,
        block_bytes=SMALL_BLOCKS,
    )
    return hold_extras(pool, METHODS[method])  # the same extras in every placement


def _merged(zoo, method: str, dtype: str, placement: str, device: str = "cpu") -> dict:
    pool = _pool(zoo, method, dtype, placement, device)
    try:
        return {n: t.cpu() for n, t in merged_tensors(_plan(method), pool)}
    finally:
        pool.close()


def _assert_bit_identical(got: dict, expected: dict, label: str) -> None:
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype
        assert torch.equal(got[name].view(torch.uint8), tensor.view(torch.uint8)), (label, name)


@pytest.fixture(scope="module")
def device_merges(tiny_zoo) -> dict:
    """The reference: every method and dtype merged from resident device stacks."""
    return {(m, d): _merged(tiny_zoo, m, d, "device") for m in METHODS for d in DTYPES}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("placement", ["host", "disk"])
def test_every_placement_merges_to_the_same_bits(tiny_zoo, device_merges, method, dtype, placement):
    got = _merged(tiny_zoo, method, dtype, placement)
    _assert_bit_identical(got, device_merges[method, dtype], f"{placement} {method} {dtype}")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_materialize_writes_the_same_model_from_every_placement(tiny_zoo, placement):
    reference = _pool(tiny_zoo, "task_arithmetic", "bfloat16", "device")
    expected, _ = load_model(reference, tokenizer=False)
    pool = _pool(tiny_zoo, "task_arithmetic", "bfloat16", placement)
    model, _ = load_model(pool, tokenizer=False)
    grouped = MergePlan.create("linear", [[0.2, 1.0], [0.5, 0.0], [0.3, 0.5]])
    for plan in (_plan("task_arithmetic"), grouped, _plan("ties")):
        materialize(plan, reference, expected)
        materialize(plan, pool, model)
        _assert_bit_identical(model.state_dict(), expected.state_dict(), placement)
    held = pool.resident_bytes()
    assert held == (0 if placement == "disk" else 4 * pool.model_bytes())
    assert pool.placement == placement and pool.placement_choice.placement == placement


# -- the store contract, for every placement --------------------------------------------------


def _tables(folders):
    tables = []
    for folder in folders:
        table = {}
        for file in sorted(folder.glob("*.safetensors")):
            table.update(read_table(file)[0])
        tables.append(table)
    return tables


STORE_CASES = [(p, {}) for p in PLACEMENTS] + [
    ("disk", {"prefetch": False}),
    ("disk", {"keep_open": False}),
]


@pytest.mark.parametrize(
    ("placement", "options"), STORE_CASES, ids=["device", "host", "disk", "serial", "reopen"]
)
def test_store_contract_get_and_stream(tiny_zoo, placement, options):
    folders = tiny_zoo.checkpoints  # ft_b is sharded: members' files differ
    tables = _tables(folders)
    shapes = {n: i.shape for n, i in tables[0].items()}
    store = build_store(
        placement, tables, shapes, torch.bfloat16, torch.device("cpu"), block_bytes=1536, **options
    )
    store.load()
    files = [read_tensors(f) for f in folders]
    name = "model.layers.1.mlp.down_proj.weight"  # [32, 64]: 2048 elements
    expected = torch.stack([f[name] for f in files]).bfloat16()
    got = store.get(name)
    assert got.shape == (3, 32, 64) and got.is_contiguous() and torch.equal(got, expected)
    block = store.block_elems()
    assert block is None if placement != "disk" else block == 256
    requests = [("model.norm.weight", 0, 32), (name, 0, 2048), (name, 64, 1088), (name, 1088, 2048)]
    seen = [t.clone() for t in store.stream(requests)]
    assert seen[0].shape == (3, 32) and torch.equal(
        seen[0], torch.stack([f["model.norm.weight"] for f in files]).bfloat16()
    )
    assert seen[1].shape == (3, 32, 64) and torch.equal(seen[1], expected)
    flat = expected.view(3, -1)
    assert seen[2].shape == (3, 1024) and torch.equal(seen[2], flat[:, 64:1088])
    assert torch.equal(seen[3], flat[:, 1088:])
    expected_bytes = 3 * sum(t.numel() for t in files[0].values()) * 2
    assert store.resident_bytes() == (0 if placement == "disk" else expected_bytes)
    store.close()


def test_split_ranges_cover_in_aligned_blocks():
    assert split_ranges(10, None) == [(0, 10)]
    assert split_ranges(10, 16) == [(0, 10)]
    ranges = split_ranges(1000, 256)
    assert ranges == [(0, 256), (256, 512), (512, 768), (768, 1000)]
    assert all(start % ALIGN == 0 for start, _ in ranges)


def test_resident_load_reads_files_in_parallel_to_the_same_stacks(tiny_zoo):
    one = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base).load(base=True, threads=1)
    four = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base).load(base=True, threads=4)
    for name in one.tensor_names:
        assert torch.equal(one.stack(name), four.stack(name))
        assert torch.equal(one.base_tensor(name), four.base_tensor(name))


def test_disk_reads_hand_pages_back(tmp_path):
    """Reading a file through the disk store leaves (almost) none of it in the process's RSS."""
    from safetensors.torch import save_file

    if not _rss_file_kib():
        pytest.skip("no /proc/self/status RssFile here (not Linux)")
    file = tmp_path / "big.safetensors"
    save_file({f"t{i}": torch.randn(1024, 1024) for i in range(16)}, str(file))  # 64 MiB
    fd = os.open(file, os.O_RDONLY)
    try:  # evicted, the file comes back through readahead (large page-cache folios) as usual
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    table, _ = read_table(file)
    shapes = {n: i.shape for n, i in table.items()}
    kept = build_store("disk", [table], shapes, torch.float32, torch.device("cpu"))
    kept.load()
    before = _rss_file_kib()
    # uneven blocks: a read maps pages around its range (fault-around, large folios) too
    requests = [(n, a, b) for n in shapes for a, b in split_ranges(1024 * 1024, 300_032)]
    for _ in kept.stream(requests):
        pass
    growth_mib = (_rss_file_kib() - before) / 1024
    assert growth_mib < 8, f"{growth_mib:.0f} MiB of a 64 MiB file stayed mapped"
    kept.close()


def _rss_file_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssFile:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


# -- auto -------------------------------------------------------------------------------------

SIZES = PoolSizes(stacks=int(8 * GB), model=int(1 * GB), work=int(0.5 * GB))


def _need(gb: float) -> int:
    return int(gb * GB / (1 - MARGIN)) + 1


def test_auto_on_cpu_is_device_when_it_fits_else_disk():
    fit = choose_placement("auto", SIZES, device_free=None, host_available=_need(9.5))
    assert fit.placement == "device"
    assert "stacks 8.00 GB + model 1.00 GB + buffers 0.50 GB" in fit.reason
    two = choose_placement("auto", SIZES, device_free=None, host_available=_need(9.5), per_host=2)
    assert two.placement == "disk"  # two workers on the host each hold a pool
    assert choose_placement("auto", SIZES, device_free=None, host_available=None).placement == (
        "device"
    )


def test_auto_on_cuda_is_device_then_host_then_disk():
    def pick(device_free, host, **kw):
        return choose_placement(
            "auto", SIZES, device_free=device_free, host_available=host, **kw
        ).placement

    assert pick(_need(9.5), 0) == "device"
    assert pick(_need(9.4), _need(8)) == "host"
    assert pick(_need(9.4), _need(7.9)) == "disk"
    assert pick(_need(1.4), _need(8)) == "disk"  # the model and buffers must fit the device
    assert pick(_need(19), _need(100), per_device=2) == "device"
    assert pick(_need(18.9), _need(16), per_device=2, per_host=2) == "host"


def test_a_requested_placement_is_kept_with_the_sizes():
    choice = choose_placement("host", SIZES, device_free=1, host_available=1)
    assert choice.placement == "host" and "requested" in choice.reason


def test_a_vllm_share_comes_off_the_device_before_the_pool_is_placed():
    """vLLM's gpu_memory_utilization is a share of the device's total memory per worker: the
    pool is placed in what is left (a device pool that fits the free memory alone would not)."""
    total, free = int(80 * GB), _need(9.5) + int(0.4 * 80 * GB)
    left = free_after_reserve(free, total, 0.4, 1)
    assert left == _need(9.5)
    assert choose_placement("auto", SIZES, device_free=left, host_available=0).placement == "device"
    smaller = free_after_reserve(free - int(GB), total, 0.4, 1)
    assert choose_placement(
        "auto", SIZES, device_free=smaller, host_available=_need(8)
    ).placement == ("host")
    assert free_after_reserve(free, total, 0.4, 3) == 0  # three engines: nothing left, never < 0
    assert free_after_reserve(free, total, 0.0, 3) == free  # hf: no share taken


def test_only_the_vllm_back_end_takes_a_device_share():
    from evaluators.spec import EvalSpec

    assert EvalSpec().device_share == 0.0
    spec = EvalSpec(backend="vllm", vllm={"gpu_memory_utilization": 0.3})
    assert spec.device_share == 0.3


def test_pool_auto_resolves_at_open(tiny_zoo):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base, placement="auto")
    assert pool.placement == "device"  # a tiny pool fits any host
    assert pool.placement_choice.reason.startswith("pool: device (auto")
    assert pool.sizes(needs_base=True, linear=False).stacks == 4 * pool.model_bytes()


# -- CUDA -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_placements_merge_to_the_same_bits(tiny_zoo, method, dtype):
    expected = _merged(tiny_zoo, method, dtype, "device", device="cuda")
    for placement in ("host", "disk"):
        got = _merged(tiny_zoo, method, dtype, placement, device="cuda")
        _assert_bit_identical(got, expected, f"cuda {placement} {method} {dtype}")


@pytest.mark.gpu
def test_cuda_host_stacks_are_page_locked_and_streamed(tiny_zoo):
    pool = _pool(tiny_zoo, "linear", "bfloat16", "host", device="cuda").load()
    store = pool.checkpoint_store
    assert store.block_elems() is not None
    assert all(t.is_pinned() for t in store.stacks().values())
    assert pool.stack("lm_head.weight").device.type == "cuda"
    pool.close()


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_fishers_read_from_files_follow_the_placement(tiny_zoo, tmp_path, placement):
    from safetensors.torch import save_file

    reference = _pool(tiny_zoo, "fisher", "bfloat16", "device")  # Fishers as tensors
    expected = {n: t.cpu() for n, t in merged_tensors(_plan("fisher"), reference)}
    files = []
    for i in range(3):
        held = reference.extras("fisher")
        fisher = {n: held.get(n)[i].float().contiguous() for n in reference.shapes}
        files.append(tmp_path / f"f{i}.safetensors")
        save_file(fisher, str(files[-1]))
    reference.close()
    pool = CheckpointPool.open(
        tiny_zoo.checkpoints[:3],
        tiny_zoo.base,
        dtype="bfloat16",
        placement=placement,
        block_bytes=SMALL_BLOCKS,
    )
    pool.hold(extras.from_files(pool, "fisher", files, torch.bfloat16, pool.shapes))
    try:
        store = pool.extras("fisher").store
        assert store is not None and store.placement == placement
        fisher_bytes = store.resident_bytes()
        # resident placements hold another pool's worth; disk holds nothing between trials
        assert (fisher_bytes == 0) == (placement == "disk")
        got = {n: t.cpu() for n, t in merged_tensors(_plan("fisher"), pool)}
        _assert_bit_identical(got, expected, f"fisher from files, {placement}")
    finally:
        pool.close()


def test_a_fisher_file_without_a_tensor_is_refused_naming_it(tiny_zoo, tmp_path):
    from safetensors.torch import save_file

    from search.errors import UserError

    pool = CheckpointPool.open(tiny_zoo.checkpoints[:2], tiny_zoo.base, placement="disk")
    files = []
    for i in range(2):
        shapes = dict(pool.shapes)
        if i == 1:
            shapes.pop(next(iter(shapes)))
        files.append(tmp_path / f"f{i}.safetensors")
        save_file({n: torch.ones(s) for n, s in shapes.items()}, str(files[-1]))
    with pytest.raises(UserError, match=f"stat of {pool.names[1]} for tensor .* is missing"):
        extras.from_files(pool, "stat", files, torch.float32, pool.shapes)
    pool.close()
