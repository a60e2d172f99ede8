"""Where tensors live: resolving ``device: auto``, one GPU per worker, torch's CPU threads."""

from __future__ import annotations

import torch

from search.errors import UserError


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → cuda when available else cpu; ``UserError`` for an unknown or absent device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device: expected cpu, cuda, cuda:N or auto, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {device} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device: expected cpu, cuda, cuda:N or auto, got {device!r}")
    return dev


def set_cpu_threads(device: str | torch.device, threads: int | None) -> None:
    """Torch intra-op threads for work on ``device`` if it is the CPU (``None``/0: torch's own)."""
    if threads and resolve_device(device).type == "cpu":
        torch.set_num_threads(threads)


def worker_device(device: str, index: int, n_gpus: int) -> str:
    """The device of local worker ``index`` on a host with ``n_gpus`` GPUs (pure).

    ``auto`` and ``cuda`` spread workers over the GPUs: worker ``i`` uses ``cuda:{i mod G}``;
    ``auto`` without a GPU is ``cpu``; ``cpu`` and ``cuda:N`` (every worker pinned there) are
    kept; so is ``cuda`` without a GPU (:func:`resolve_device` then says CUDA is missing).
    """
    if device in ("auto", "cuda") and n_gpus > 0:
        return f"cuda:{index % n_gpus}"
    if device == "auto":
        return "cpu"
    return device


def local_gpu_count() -> int:
    """GPUs this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def use_device(device: str | torch.device) -> None:
    """Make a ``cuda:N`` device this process's current CUDA device (no-op otherwise), so that
    libraries defaulting to the current device, and the CUDA context, land on this worker's GPU.
    """
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
