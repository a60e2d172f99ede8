"""Shared by the launch and worker tests: a tiny pool, real lm-eval tasks, a study config, polling.

The pool is a copy of the ``tiny_zoo`` checkpoints (so a test may change a file); the tasks are
a multiple-choice lm-eval task (``acc``, varies with the weights) and a perplexity text file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import yaml

REPO = Path(__file__).resolve().parents[2]
CHOICES = [
    ("ab+c=", ["abc", "cab", "bca"], 0),
    ("1+2=", ["3", "4", "5"], 0),
    ("dog:", ["god", "odg", "dgo"], 0),
    ("x*y=", ["xy", "yx", "xx"], 1),
    ("red.", ["der", "erd", "red"], 2),
    ("9-4=", ["5", "6", "4"], 0),
    ("sun!", ["nus", "uns", "sun"], 0),
    ("(a)", ["a", "b", "c"], 0),
    ("go,", ["og", "go", "oo"], 1),
    ("7/7=", ["1", "7", "0"], 0),
]
TEXT = [
    "the cat sat on the mat.",
    "one plus two is three.",
    "print(a+b) shows the sum.",
    "reverse: stone? enots",
    "upper: abc? abc",
    "a=4;b=a+3;print(b)? 7",
]


def write_choice_task(folder: Path, name: str, items: Sequence[tuple[str, list[str], int]]):
    """A local multiple-choice lm-eval task ``name`` (metric ``acc``) in ``folder``: its data
    ``<name>.jsonl`` from ``(question, choices, answer index)`` items and ``<name>.yaml``."""
    data = folder / f"{name}.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in items)
    )
    (folder / f"{name}.yaml").write_text(
        yaml.safe_dump(
            {
                "task": name,
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test",
                "output_type": "multiple_choice",
                "doc_to_text": "{{question}}",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "{{answer}}",
                "metric_list": [{"metric": "acc"}],
            }
        )
    )


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
    never writes; before the launcher is done it gets an OperationalError and waits.
    """
    if storage.startswith("sqlite:///"):
        path = Path(storage[len("sqlite:///") :])
        if not path.is_file():
            return []
        storage = f"sqlite:///file:{path}?mode=ro&uri=true"
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except (KeyError, sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        # StorageInternalError: the file exists but its tables are not stamped yet, and the
        # read-only poll's attempt to stamp them failed ("attempt to write a readonly database")
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
