"""Shared test settings: offline Hugging Face, few threads (CI has 2 cores).

Session fixtures shared across packages:

* ``demo_zoo``: the demo pool built by ``search.zoo.build_zoo`` at ``size="tiny"`` (a base and
  seven fine-tuned checkpoints, character tokenizer, the demo tasks in ``tasks_path``); built
  once per session into a temporary folder. Scores of tiny checkpoints mean nothing.
* ``demo_tasks_path``: the committed demo task folder ``configs/tasks/demo``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_tasks_path() -> Path:
    return REPO / "configs" / "tasks" / "demo"


@pytest.fixture(scope="session")
def demo_zoo(tmp_path_factory: pytest.TempPathFactory):
    """``ZooManifest`` of a tiny demo pool (the eight-checkpoint ``mixtures`` recipe, the
    smaller one): ``.base``, ``.checkpoints``, ``.tasks_path``."""
    from search.zoo import build_zoo

    folder = tmp_path_factory.mktemp("demo_zoo") / "zoo"
    return build_zoo(folder, seed=0, size="tiny", progress=False, recipe="mixtures")
