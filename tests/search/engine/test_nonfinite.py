"""A checkpoint holding NaN or Inf is found by the read that hashes it, and the verdict is cached
with the digest (a cached digest never skips the check)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from search.engine import digests
from search.engine.digests import DigestCache, FileStamp, scan_file
from search.engine.pool import CheckpointPool
from search.errors import UserError

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")], ids=str)
def test_scan_finds_the_first_nonfinite_tensor_across_chunk_boundaries(
    tmp_path, monkeypatch, dtype, bad
):
    monkeypatch.setattr(digests, "_CHUNK", 37)  # chunks cut elements and tensors anywhere
    tensors = {
        "a": torch.randn(50, dtype=dtype),
        "b": torch.randn(3, 11, dtype=dtype),
        "ids": torch.arange(9),  # integers are never non-finite
        "c": torch.randn(20, dtype=dtype),
    }
    if bad is not None:
        tensors["b"][2, 10] = bad  # the last element of b
        tensors["c"][0] = bad
    file = tmp_path / "model.safetensors"
    save_file(tensors, file)
    scan = scan_file(file)
    kind = "NaN" if bad is not None and bad != bad else "Inf"
    assert scan.nonfinite == (None if bad is None else f"b ({kind})")
    assert scan.digest == digests.file_digest(file)


def test_huge_finite_values_are_finite(tmp_path):
    file = tmp_path / "model.safetensors"
    save_file({"w": torch.full((8,), torch.finfo(torch.float32).max)}, file)
    assert scan_file(file).nonfinite is None


def _poison(folder, tensor="model.norm.weight", value=float("nan")):
    """Write ``value`` into one element of ``tensor`` of the folder's (single) file."""
    from safetensors.torch import load_file

    file = folder / "model.safetensors"
    state = load_file(file)
    state[tensor].view(-1)[3] = value
    save_file(state, file, metadata={"format": "pt"})
    return file


def test_a_pool_with_nan_is_refused_naming_file_and_tensor_also_from_the_cache(tiny_zoo, tmp_path):
    import shutil

    folder = tmp_path / "ft_c"
    shutil.copytree(tiny_zoo.checkpoints[2], folder)
    file = _poison(folder)
    expected = f"{file}: tensor model.norm.weight holds NaN values"
    for _ in range(2):  # the second time the verdict comes from the digest cache
        pool = CheckpointPool.open([tiny_zoo.checkpoints[0], folder], placement="disk")
        with pytest.raises(UserError, match=expected) as info:
            pool.identity.fingerprint()
        assert "\n" not in str(info.value)
    assert DigestCache().get(file, FileStamp.of(file)).nonfinite == "model.norm.weight (NaN)"


def test_a_digest_cached_without_a_verdict_is_read_again(tiny_zoo, tmp_path):
    import shutil

    folder = tmp_path / "ft_c"
    shutil.copytree(tiny_zoo.checkpoints[2], folder)
    file = _poison(folder, value=float("inf"))
    cache = DigestCache()
    entries = {  # as a cache written before the verdict was kept: digest and stamp only
        str(file.resolve()): {"stamp": FileStamp.of(file).__dict__, "xxh3_128": "0" * 32}
    }
    cache.file.parent.mkdir(parents=True, exist_ok=True)
    cache.file.write_text(json.dumps(entries))
    pool = CheckpointPool.open([folder], placement="disk")
    with pytest.raises(UserError, match="tensor model.norm.weight holds Inf values"):
        pool.identity.fingerprint()
