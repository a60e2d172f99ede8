"""Loading lm-eval tasks once: name lookup, local data paths, metric resolution.

Task names are looked up in the tasks path first (``TaskManager(include_path=...,
include_defaults=False)``, cheap); only when a name is not there is lm-eval's built-in index
built as well (about 10 s), so built-in tasks work when their data is local.

Data path rule: a relative path in a task YAML's ``dataset_kwargs.data_files`` (or
``data_dir``) is resolved against the folder of that YAML file, so a tasks folder works from
any working directory. When the file is not there but exists relative to the current
directory, the path is left as it is (lm-eval's own rule). The rewrite is done with lm-eval's
``include:`` mechanism: a one-off overlay YAML includes the original and overrides only
``dataset_kwargs``; the original files are never changed.
"""

from __future__ import annotations

import difflib
import glob
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lm_eval.tasks import TaskManager

from search.errors import UserError

_LOCAL_BUILDERS = {"json", "csv", "text", "parquet", "arrow"}


@dataclass(frozen=True)
class LoadedTask:
    """One built lm-eval task and the metric keys its results will carry (``metric,filter``)."""

    name: str
    task: Any  # lm_eval.api.task.Task
    metric_keys: tuple[str, ...]

    def resolve_metric(self, metric: str | None, where: str) -> tuple[str, str]:
        """``(label, results key)`` for a requested metric; ``None`` is the task's first metric.

        ``metric`` may be a bare name (``exact_match``: its first filter) or ``name,filter``.
        """
        if metric is None:
            key = self.metric_keys[0]
            return key.split(",")[0], key
        for key in self.metric_keys:
            if metric == key or metric == key.split(",")[0]:
                return metric, key
        names = sorted({k.split(",")[0] for k in self.metric_keys} | set(self.metric_keys))
        raise UserError(
            f"{where}: task {self.name!r} has no metric {metric!r}; it produces: {', '.join(names)}"
        )


def metric_keys(task: Any) -> tuple[str, ...]:
    """The ``metric,filter`` keys lm-eval reports for a task, in the task's metric order."""
    metrics = list(task.aggregation())
    filters = [f["name"] for f in (task.config.filter_list or [])] or ["none"]
    return tuple(f"{m},{f}" for f in filters for m in metrics)


def load_tasks(
    names: Sequence[str], tasks_path: Path | None, where: dict[str, str] | None = None
) -> dict[str, LoadedTask]:
    """Build each named lm-eval task once (datasets loaded, metrics known).

    Args:
        names: task names (leaf tasks; groups and tags are refused).
        tasks_path: folder of task YAMLs, or ``None`` for lm-eval's built-in tasks only.
        where: task name -> what asked for it (e.g. ``"objective 'code'"``), for error messages.

    Raises:
        UserError: a missing tasks folder, an unknown name, a group or tag name.
    """

    where = where or {}
    # lm-eval warns on every HFLM built from a model object and logs each task it loads.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if tasks_path is not None and not Path(tasks_path).is_dir():
        raise UserError(f"tasks_path {str(tasks_path)!r}: expected a folder of lm-eval task YAMLs")
    manager = None
    if tasks_path is not None:
        manager = TaskManager(include_path=str(tasks_path), include_defaults=False)
    local = set(manager.all_tasks) if manager else set()
    if manager is None or any(n not in local for n in names):
        manager = TaskManager(include_path=str(tasks_path) if tasks_path else None)
    for name in names:
        if name not in manager.task_index:
            raise UserError(_unknown(name, where.get(name, "tasks"), tasks_path, local, manager))
        if name not in manager.all_subtasks:
            raise UserError(
                f"{where.get(name, 'tasks')}: {name!r} is an lm-eval group or tag; "
                "list its tasks one by one instead"
            )
    loaded: dict[str, LoadedTask] = {}
    with tempfile.TemporaryDirectory(prefix="merge-search-tasks-") as tmp:
        for name in names:
            spec = _overlay(manager.task_index[name], Path(tmp))
            task = manager.load([spec])["tasks"][name]
            loaded[name] = LoadedTask(name=name, task=task, metric_keys=metric_keys(task))
    return loaded


def _unknown(name: str, where: str, tasks_path: Path | None, local: set[str], manager: Any) -> str:
    close = difflib.get_close_matches(name, manager.all_subtasks, n=3)
    listing = ", ".join(sorted(local)) or "none"
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    folder = f"tasks in {str(tasks_path)!r}: {listing}" if tasks_path else "no tasks_path given"
    return f"{where}: unknown lm-eval task {name!r} ({folder}; built-in tasks searched too){hint}"


def _overlay(entry: Any, tmp: Path) -> str:
    """The task name, or the path of an overlay YAML when its local data paths need resolving."""
    cfg = entry.cfg or {}
    kwargs = cfg.get("dataset_kwargs")
    if entry.yaml_path is None or cfg.get("dataset_path") not in _LOCAL_BUILDERS or not kwargs:
        return entry.name
    base = Path(entry.yaml_path).resolve().parent
    fixed = dict(kwargs)
    if "data_dir" in fixed:
        fixed["data_dir"] = _resolve(fixed["data_dir"], base)
    elif "data_files" in fixed:
        fixed["data_files"] = _map_paths(fixed["data_files"], base)
    if fixed == kwargs:
        return entry.name
    overlay = tmp / f"{entry.name}.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "include": str(Path(entry.yaml_path).resolve()),
                "task": entry.name,
                "dataset_kwargs": fixed,
            }
        )
    )
    return str(overlay)


def _map_paths(files: Any, base: Path) -> Any:
    if isinstance(files, str):
        return _resolve(files, base)
    if isinstance(files, list):
        return [_map_paths(f, base) for f in files]
    if isinstance(files, dict):
        return {k: _map_paths(v, base) for k, v in files.items()}
    return files


def _resolve(path: str, base: Path) -> str:
    """``path`` against ``base`` when it names something there; else unchanged."""
    if "://" in path or Path(path).is_absolute():
        return path
    candidate = base / path
    if candidate.exists() or glob.glob(str(candidate)):
        return str(candidate)
    return path
