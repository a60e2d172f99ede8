"""Reading a checkpoint folder back as the files hold it, for the tests that compare tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_tensors(folder: str | Path) -> dict[str, Any]:
    """Every tensor of every ``*.safetensors`` file in ``folder`` (one file or shards), by name."""
    from safetensors import safe_open

    out = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out
