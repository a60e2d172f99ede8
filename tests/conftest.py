"""Shared test settings: offline Hugging Face, few threads (CI has 2 cores).

Session fixtures shared across packages:

* ``demo_zoo``: the demo pool built by ``search.zoo.build_zoo`` at ``size="tiny"`` (a base and
  seven fine-tuned checkpoints, character tokenizer, the demo tasks in ``tasks_path``); built
  once per session into a temporary folder. Scores of tiny checkpoints mean nothing.
* ``demo_tasks_path``: the committed demo task folder ``configs/tasks/demo``.
* ``tmpfs``: mounts a small real filesystem (full, read-only) for export tests; needs root.

Tests marked ``gpu`` run only where torch sees a CUDA device (``pytest -m gpu`` on a GPU host).

Every folder under ``tests/`` is a package (``tests/test_layout.py`` checks it), so pytest puts
the repository root on ``sys.path`` and shared test code is imported by its path:
``tests.toy_tasks`` (the toy multiple-choice items and their lm-eval task writer),
``tests.checkpoint_files`` (``read_tensors``), ``tests.search.study_fixtures``,
``tests.search.report_fixtures`` and ``tests.evaluators.eval_fixtures``. Fixtures go in the
``conftest.py`` of the narrowest folder that shares them; no test module imports another.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# the library sets no Hugging Face variable (the user's network choice); the tests reach no hub,
# so a plain ``pytest`` run is offline as ``make test`` is: set before anything imports
# transformers, datasets or lm_eval (they read these variables at import)
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# checkpoint digests (search.engine.digests) are cached here, not in the user's ~/.cache
os.environ["MERGE_SEARCH_CACHE"] = tempfile.mkdtemp(prefix="merge-search-digests-")

REPO = Path(__file__).resolve().parent.parent


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``gpu`` skip where torch sees no CUDA device (``-m gpu`` runs only them)."""
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that builds a worker's runtime in-process sets torch's thread count (the worker's
    ``workers.threads``); restore it after each test, so a later test computing in-process (a
    Fisher, a Gram) sums in the same order as the subprocesses it is compared with."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def vllm_available() -> None:
    """vLLM can be imported; else skip, except under CI, where the vLLM tests must run.

    ``.ci/run`` runs the tests marked ``vllm`` in the venv ``make vllm-venv`` builds; there, a
    missing vLLM is an install step that broke, not a reason to skip.
    """
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI"):
            pytest.fail("CI=true but vLLM is not installed: run the vllm tests in `make vllm-venv`")
        pytest.skip("vLLM is not installed (make vllm-venv; make test-vllm runs these tests)")


@pytest.fixture(scope="session")
def vllm_zoo(tmp_path_factory: pytest.TempPathFactory):
    """A pool of the demo model family that vLLM's CPU attention runs (head size 32; the tiny
    demo pool's 16 is below its smallest): ``.base``, ``.checkpoints`` (four), ``.tasks_path``
    (the demo tasks). Random weights, seeded: the base, then the base plus seeded noise of
    growing size, so each checkpoint generates differently.
    """
    import types

    import torch
    from transformers import LlamaForCausalLM

    from search.zoo.model import char_tokenizer, llama_config

    root = tmp_path_factory.mktemp("vllm_zoo")
    config = llama_config(hidden=64, layers=2, heads=2, intermediate=128, context=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    base = {n: t.detach().clone() for n, t in model.state_dict().items()}
    tok = char_tokenizer()
    folders = []
    for i in range(5):
        gen = torch.Generator().manual_seed(100 + i)
        model.load_state_dict(
            {
                n: t + 0.3 * i * t.std() * torch.randn(t.shape, generator=gen)
                for n, t in base.items()
            }
        )
        folder = root / ("base" if i == 0 else f"ckpt_{i}")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(folder)
    return types.SimpleNamespace(
        base=folders[0], checkpoints=tuple(folders[1:]), tasks_path=REPO / "configs/tasks/demo"
    )
