"""Shared test settings: offline Hugging Face, few threads (CI has 2 cores).

Session fixtures shared across packages:

* ``demo_zoo``: the demo pool built by ``search.zoo.build_zoo`` at ``size="tiny"`` (a base and
  seven fine-tuned checkpoints, character tokenizer, the demo tasks in ``tasks_path``); built
  once per session into a temporary folder. Scores of tiny checkpoints mean nothing.
* ``demo_tasks_path``: the committed demo task folder ``configs/tasks/demo``.
* ``tmpfs``: mounts a small real filesystem (full, read-only) for export tests; needs root.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# checkpoint digests (search.engine.digests) are cached here, not in the user's ~/.cache
os.environ["MERGE_SEARCH_CACHE"] = tempfile.mkdtemp(prefix="merge-search-digests-")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_tasks_path() -> Path:
    return REPO / "configs" / "tasks" / "demo"


@pytest.fixture(scope="session")
def demo_zoo(tmp_path_factory: pytest.TempPathFactory):
    """``ZooManifest`` of a tiny demo pool: ``.base``, ``.checkpoints``, ``.tasks_path``."""
    from search.zoo import build_zoo

    folder = tmp_path_factory.mktemp("demo_zoo") / "zoo"
    return build_zoo(folder, seed=0, size="tiny", progress=False)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (``options``: ``size=16k``, ``ro``) under ``tmp_path``; needs root."""
    import os
    import subprocess

    mounted = []

    def mount(name: str, options: str):
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs needs root (uid {os.geteuid()}): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)
