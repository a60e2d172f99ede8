"""Device helpers: one GPU per worker (a pure function), resolving devices."""

from __future__ import annotations

import pytest
import torch

from search.engine.device import resolve_device, worker_device
from search.errors import UserError


def test_workers_spread_over_the_gpus_round_robin():
    assert [worker_device("auto", i, 2) for i in range(5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
        "cuda:1",
        "cuda:0",
    ]
    assert [worker_device("cuda", i, 3) for i in range(4)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:0",
    ]


def test_pinned_cpu_and_gpu_less_hosts_keep_their_device():
    assert [worker_device("cuda:1", i, 4) for i in range(3)] == ["cuda:1"] * 3
    assert worker_device("cpu", 3, 8) == "cpu"
    assert worker_device("auto", 3, 0) == "cpu"
    assert worker_device("cuda", 0, 0) == "cuda"  # resolve_device then says CUDA is missing


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="expected cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device(worker_device("cuda", 0, 0))
