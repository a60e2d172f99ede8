"""Shared by the launch and worker tests: a tiny pool, real lm-eval tasks, a study config, polling,
a launch in a process group of its own, the shared PostgreSQL.

The pool is a copy of the ``tiny_zoo`` checkpoints (so a test may change a file); the tasks are
a multiple-choice lm-eval task (``acc``, varies with the weights) and a perplexity text file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy.exc
import yaml

from tests.toy_tasks import TOY_CHOICES, write_choice_task

REPO = Path(__file__).resolve().parents[2]
CHOICES = TOY_CHOICES[:10]
TEXT = [
    "the cat sat on the mat.",
    "one plus two is three.",
    "print(a+b) shows the sum.",
    "reverse: stone? enots",
    "upper: abc? abc",
    "a=4;b=a+3;print(b)? 7",
]


def build_pool_and_tasks(root: Path, tiny_zoo: Any) -> dict[str, Any]:
    """Copy the tiny pool under ``root/pool`` and write the tasks under ``root/tasks``."""
    pool = root / "pool"
    shutil.copytree(tiny_zoo.base, pool / "base")
    for ckpt in tiny_zoo.checkpoints:
        shutil.copytree(ckpt, pool / Path(ckpt).name)
    tasks = root / "tasks"
    tasks.mkdir()
    write_choice_task(tasks, "c1_pick", CHOICES)
    (tasks / "text.txt").write_text("\n".join(TEXT) + "\n")
    return {
        "checkpoints": [str(pool / Path(c).name) for c in tiny_zoo.checkpoints],
        "base_model": str(pool / "base"),
        "tasks_path": str(tasks),
        "text": str(tasks / "text.txt"),
    }


def study_config(paths: dict[str, Any], name: str, storage: str, **extra: Any) -> dict[str, Any]:
    """A two-objective study of a linear merge over the tiny pool."""
    data = {
        "name": name,
        "storage": storage,
        "checkpoints": paths["checkpoints"],
        "base_model": paths["base_model"],
        "merge": {"method": "linear", "weights": {"low": 0.0, "high": 1.0}},
        "objectives": [
            {
                "name": "pick",
                "direction": "maximize",
                "tasks": [{"task": "c1_pick", "metric": "acc"}],
            },
            {
                "name": "ppl",
                "direction": "minimize",
                "evaluator": "perplexity",
                "data": paths["text"],
            },
        ],
        "tasks_path": paths["tasks_path"],
        "eval": {"limit": 6, "batch_size": 8},
        "sampler": {"name": "nsga2", "seed": 0, "options": {"population_size": 4}},
        "budget": {"n_trials": 6},
        "workers": {"heartbeat_s": 1, "grace_s": 3, "max_retry": 3, "threads": 1},
        "device": "cpu",
        "dtype": "float32",
    }
    data.update(extra)
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def create_study(config: Path) -> None:
    """Create the study (its seed trials queued) without running a trial."""
    from search.engine.pool import CheckpointPool
    from search.study.config import load_config
    from search.study.space import SearchSpace
    from search.study.storage import create_or_resume, open_storage

    cfg = load_config(config)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model)
    space = SearchSpace.build(cfg, pool.names)
    create_or_resume(
        cfg, open_storage(cfg, create=True), space, pool.identity.fingerprint(), config
    )


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    """``merge-search ARGS`` in a child process (as a user runs it from a shell)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def trials(name: str, storage: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, or [] while the study does not exist yet or is being created.

    A SQLite file is opened read-only: opening a new file through Optuna creates its tables and
    stamps their version, and a poll doing so while the launcher creates the same file makes
    one of the two fail (seen as an IntegrityError on ``alembic_version``). Read-only, the poll
    never writes; before the launcher is done it gets an OperationalError (or, when the tables
    exist but Optuna's version row does not yet, the StorageInternalError Optuna wraps the
    refused write in) and waits.
    """
    if storage.startswith("sqlite:///"):
        path = Path(storage[len("sqlite:///") :])
        if not path.is_file():
            return []
        storage = f"sqlite:///file:{path}?mode=ro&uri=true"
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except (KeyError, sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        return []


def wait_for(
    condition: Callable[[], Any],
    what: str,
    proc: subprocess.Popen | None = None,
    limit_s: float = 300,
) -> Any:
    """Poll until ``condition()`` is truthy (a guard against hanging, not a timed assertion)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"process exited ({proc.returncode}) while waiting for {what}: "
                f"{proc.communicate()[1]}"
            )
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def complete(ts: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE]


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (from /proc; zombies not counted)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def launch_in_group(config: Path, *args: str, cwd: Path) -> subprocess.Popen:
    """``merge-search launch CONFIG ARGS`` as a shell runs it: in a process group of its own
    (Ctrl-C in a terminal reaches the whole group)."""
    return in_group([sys.executable, "-m", "search.cli", "launch", str(config), *args], cwd=cwd)


def in_group(command: list[str], *, cwd: Path) -> subprocess.Popen:
    """``command`` in a process group of its own, unbuffered, its output piped."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


ROLES = ("postgres", "root")


def _postgres_url() -> str | None:
    import sqlalchemy

    for role in ROLES:
        url = f"postgresql://{role}@127.0.0.1:5432/test"
        try:
            engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
            with engine.connect():
                pass
            engine.dispose()
            return url
        except Exception:  # noqa: BLE001, S112 - any failure means: not usable here
            continue
    return None


def postgres_or_skip() -> str:
    """The shared PostgreSQL's URL; skip when unreachable, but fail with ``CI`` set (CI runs
    the server: a skip there would hide a failure)."""
    url = _postgres_url()
    if url is None:
        message = f"PostgreSQL not reachable at 127.0.0.1:5432/test as {' or '.join(ROLES)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url
