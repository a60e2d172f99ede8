"""Loading lm-eval tasks, groups and tags once: name lookup, checks, local data paths, metrics.

Names are looked up in the tasks path first (``TaskManager(include_path=...,
include_defaults=False)``, cheap); only when a name is not there is lm-eval's built-in index
built as well (about 10 s), so built-in tasks, groups and tags work when their data is local.

:func:`resolve_tasks` checks every name against the task configs alone, before any dataset is
loaded (the launcher runs it before starting a worker): unknown names, a group that lists an
unknown task, a task marked ``unsafe_code`` without consent, a local data file that is not
there, a Hugging Face dataset that is neither in the local datasets cache nor fetchable
(offline, or no network). :func:`load_tasks` then builds the tasks and groups with lm-eval's own
``TaskManager.load`` (a group comes with its subtasks and nested groups, a tag expands to its
tasks), one name at a time so that a task may appear both alone and inside a group.

Data path rule: a relative path in a task YAML's ``dataset_kwargs.data_files`` (or
``data_dir``) is resolved against the folder of that YAML file, so a tasks folder works from
any working directory. When the file is not there but exists relative to the current
directory, the path is left as it is (lm-eval's own rule). The rewrite is done with lm-eval's
``include:`` mechanism: a one-off overlay YAML includes the original and overrides only
``dataset_kwargs``; the index entry of the task points to it (so groups and tags pick it up
too); the original files are never changed.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lm_eval.tasks import TaskManager

from search.errors import UserError

_LOCAL_BUILDERS = {"json", "csv", "text", "parquet", "arrow"}


def _resolve_metric(
    kind: str, name: str, keys: Sequence[str], metric: str | None, where: str
) -> tuple[str, str]:
    """``(label, results key)`` for a requested metric; ``None`` is the first of ``keys``."""
    if not keys:
        raise UserError(f"{where}: {kind} {name!r} reports no metric")
    if metric is None:
        return keys[0].split(",")[0], keys[0]
    for key in keys:
        if metric == key or metric == key.split(",")[0]:
            return metric, key
    names = sorted({k.split(",")[0] for k in keys} | set(keys))
    raise UserError(
        f"{where}: {kind} {name!r} has no metric {metric!r}; it produces: {', '.join(names)}"
    )


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
        return _resolve_metric("task", self.name, self.metric_keys, metric, where)


@dataclass(frozen=True)
class LoadedGroup:
    """One built lm-eval group: its leaf tasks (in lm-eval's order) and aggregate metric keys."""

    name: str
    group: Any  # lm_eval.api.group.Group
    leaves: tuple[str, ...]
    metric_keys: tuple[str, ...]
    weight_by_size: Mapping[str, bool]  # results key -> lm-eval's weight_by_size for it

    def resolve_metric(self, metric: str | None, where: str) -> tuple[str, str]:
        """As :meth:`LoadedTask.resolve_metric`, over the group's ``aggregate_metric_list``."""
        if not self.metric_keys:
            raise UserError(
                f"{where}: group {self.name!r} has no aggregate_metric_list, so lm-eval reports "
                "no score for it; add one to its YAML or list its tasks"
            )
        return _resolve_metric("group", self.name, self.metric_keys, metric, where)


@dataclass(frozen=True)
class TaskSet:
    """What :func:`load_tasks` built: every leaf task, every group, and what each name stands for.

    Attributes:
        tasks: leaf task name -> task (the tasks of groups and tags included).
        groups: group name -> group (nested groups included).
        kinds: requested name -> ``"task"``, ``"group"`` or ``"tag"``.
        members: requested name -> its leaf tasks (a task: itself).
    """

    tasks: dict[str, LoadedTask]
    groups: dict[str, LoadedGroup]
    kinds: dict[str, str]
    members: dict[str, tuple[str, ...]]

    def task_dict(self) -> dict[str, Any]:
        """The ``task_dict`` that ``lm_eval.evaluator.evaluate`` takes (groups aggregated)."""
        return {
            "tasks": {n: t.task for n, t in self.tasks.items()},
            "groups": {n: g.group for n, g in self.groups.items()},
            "group_map": {n: list(g.group.child_names) for n, g in self.groups.items()},
        }


def metric_keys(task: Any) -> tuple[str, ...]:
    """The ``metric,filter`` keys lm-eval reports for a task, in the task's metric order."""
    metrics = list(task.aggregation())
    filters = [f["name"] for f in (task.config.filter_list or [])] or ["none"]
    return tuple(f"{m},{f}" for f in filters for m in metrics)


def group_metric_keys(
    group: Any, tasks: Mapping[str, LoadedTask]
) -> tuple[tuple[str, ...], dict[str, bool]]:
    """The ``metric,filter`` keys lm-eval aggregates for a group, and each one's size weighting.

    Filters left open in ``aggregate_metric_list`` are those of the group's tasks, as lm-eval
    discovers them.
    """
    keys: list[str] = []
    weight_by_size: dict[str, bool] = {}
    leaves = [t.task_name for t in group.get_all_tasks()]
    for agg in group.aggregate_metric_list or []:
        filters = agg.filter_list
        if filters is None:
            found = {
                key.split(",", 1)[1]
                for leaf in leaves
                for key in tasks[leaf].metric_keys
                if key.split(",", 1)[0] == agg.metric
            }
            filters = sorted(found)
        for name in filters:
            key = f"{agg.metric},{name}"
            if key not in weight_by_size:
                keys.append(key)
                weight_by_size[key] = bool(agg.weight_by_size)
    return tuple(keys), weight_by_size


# ------------------------------------------------------------------------------ resolving


@dataclass
class Catalog:
    """Requested names resolved in lm-eval's task index and checked; nothing built yet.

    Attributes:
        manager: the ``TaskManager`` (its index is what :func:`load_tasks` builds from).
        kinds: requested name -> ``"task"``, ``"group"`` or ``"tag"``.
        leaves: requested name -> its leaf task names as the configs list them.
        configs: leaf task name -> its config (includes resolved, functions not imported).
    """

    manager: Any
    kinds: dict[str, str] = field(default_factory=dict)
    leaves: dict[str, tuple[str, ...]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def resolve_tasks(
    names: Sequence[str],
    tasks_path: Path | None,
    where: Mapping[str, str] | None = None,
    *,
    confirm_run_unsafe_code: bool = False,
) -> Catalog:
    """Look every name up and check its tasks' configs; loads no dataset.

    Args:
        names: task, group or tag names.
        tasks_path: folder of task YAMLs, or ``None`` for lm-eval's built-in tasks only.
        where: name -> what asked for it (e.g. ``"objective 'code'"``), for error messages.
        confirm_run_unsafe_code: allow tasks marked ``unsafe_code`` (they run model output).

    Raises:
        UserError: a missing tasks folder, an unknown name, a group listing an unknown task,
            an unsafe task without consent, missing local data, a dataset not in the local
            Hugging Face cache.
    """

    where = where or {}
    # lm-eval warns on every HFLM built from a model object and logs each task it loads.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if tasks_path is not None and not Path(tasks_path).is_dir():
        raise UserError(f"tasks_path {str(tasks_path)!r}: expected a folder of lm-eval task YAMLs")
    manager, built_in = None, True
    if tasks_path is not None:
        check_yaml_syntax(Path(tasks_path))
        manager = TaskManager(include_path=str(tasks_path), include_defaults=False)
    local = set(manager.all_tasks) if manager else set()
    if manager is None or any(n not in local for n in names):
        manager = TaskManager(include_path=str(tasks_path) if tasks_path else None)
    else:
        built_in = False
    try:
        catalog = _catalog(manager, names, where, tasks_path, local, final=built_in)
    except _UnknownMember:  # a local group lists a built-in task: look again with lm-eval's own
        manager = TaskManager(include_path=str(tasks_path))
        catalog = _catalog(manager, names, where, tasks_path, local, final=True)
    checked: set[tuple[str, str | None]] = set()
    for leaf, cfg in catalog.configs.items():
        asker = next((where.get(n, "tasks") for n in names if leaf in catalog.leaves[n]), "tasks")
        if cfg.get("unsafe_code") and not confirm_run_unsafe_code:
            raise UserError(
                f"{asker}: task {leaf!r} runs code the model writes (unsafe_code: true in its "
                "YAML); set eval.confirm_run_unsafe_code: true (--confirm-run-unsafe-code on "
                "merge-search eval) to run it"
            )
        _check_data(leaf, cfg, catalog.manager.task_index.get(leaf), asker, checked)
    return catalog


_KINDS = {"GROUP": "group", "TAG": "tag", "TASK": "task", "PY_TASK": "task"}


def check_yaml_syntax(tasks_path: Path) -> None:
    """``UserError`` naming the file and line of the first task YAML under ``tasks_path`` that
    does not parse: lm-eval's ``TaskManager`` skips such a file with a log line, and its task
    would then be reported as unknown. Tags (``!function``) are not constructed, only parsed.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for file in sorted(tasks_path.rglob("*.yaml")):
        try:
            with open(file, encoding="utf-8") as f:
                for _ in yaml.compose_all(f, Loader=loader):
                    pass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f":{mark.line + 1}" if mark is not None else ""
            what = " ".join(str(exc.problem or exc.context or "syntax error").split())
            raise UserError(
                f"{file}{line}: not valid YAML ({what}); lm-eval would skip this task file"
            ) from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"{file}: unreadable task YAML ({exc})") from None


class _UnknownMember(UserError):
    """A group lists a name the index does not have (maybe a built-in one: look again)."""


def _catalog(
    manager: Any,
    names: Sequence[str],
    where: Mapping[str, str],
    tasks_path: Path | None,
    local: set[str],
    *,
    final: bool = False,
) -> Catalog:
    """Every name and its leaf tasks, from the index alone; ``final``: refuse unknown members."""
    catalog = Catalog(manager)
    registry = manager.task_index
    for name in names:
        asker = where.get(name, "tasks")
        if name not in registry:
            raise UserError(_unknown(name, asker, tasks_path, local, manager))
        found: dict[str, dict[str, Any]] = {}
        try:
            _walk(name, registry, asker, found, trail=())
        except _UnknownMember as exc:
            if final:
                raise UserError(str(exc)) from None
            raise
        catalog.kinds[name] = _KINDS.get(registry[name].kind.name, "task")
        catalog.leaves[name] = tuple(found)
        catalog.configs.update(found)
    return catalog


def _walk(
    name: str,
    registry: Mapping[str, Any],
    asker: str,
    found: dict[str, dict[str, Any]],
    trail: tuple[str, ...],
) -> None:
    """Collect the leaf tasks (name -> config) a registered name stands for, in list order."""
    entry = registry[name]
    kind = _KINDS.get(entry.kind.name, "task")
    if kind == "tag":
        for task in sorted(entry.tags):
            if task in registry:
                found.setdefault(task, dict(registry[task].cfg or {}))
        return
    if kind == "task":
        found.setdefault(name, dict(entry.cfg or {}))
        return
    if name in trail:
        raise UserError(f"{asker}: group {name!r} contains itself ({' -> '.join(trail)})")
    _walk_members(
        name, (entry.cfg or {}).get("task"), entry.yaml_path, registry, asker, found, (*trail, name)
    )


def _walk_members(
    group: str,
    members: Any,
    yaml_path: Any,
    registry: Mapping[str, Any],
    asker: str,
    found: dict[str, dict[str, Any]],
    trail: tuple[str, ...],
) -> None:
    """The leaves of a group's ``task:`` list; an unknown name is refused (lm-eval would build
    an empty inline task from it and fail later, inside a worker)."""
    if isinstance(members, str):
        members = [members]
    origin = f" ({yaml_path})" if yaml_path else ""
    for item in members or []:
        if isinstance(item, dict) and "group" in item:
            if item["group"] in registry:
                _walk(item["group"], registry, asker, found, trail)
            else:  # an inline subgroup
                _walk_members(
                    f"{group}::{item['group']}",
                    item.get("task"),
                    yaml_path,
                    registry,
                    asker,
                    found,
                    trail,
                )
            continue
        base = item.get("task") if isinstance(item, dict) else item
        if isinstance(base, str) and base in registry:
            _walk(base, registry, asker, found, trail)
        elif isinstance(item, dict) and isinstance(base, str) and item.get("dataset_path"):
            found.setdefault(f"{group}::{base}", dict(item))  # an inline task definition
        else:
            close = difflib.get_close_matches(str(base), list(registry), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise _UnknownMember(
                f"{asker}: group {group!r}{origin} lists unknown lm-eval task {base!r}{hint}"
            )


def _check_data(
    leaf: str,
    cfg: Mapping[str, Any],
    entry: Any,
    asker: str,
    checked: set[tuple[str, str | None]],
) -> None:
    """The task's data is here: local files exist, a hub dataset is in the local cache."""
    path = cfg.get("dataset_path")
    if not isinstance(path, str) or cfg.get("class") is not None or cfg.get("custom_dataset"):
        return  # a Python task or a custom loader: it knows its own data
    yaml_path = getattr(entry, "yaml_path", None)
    base = Path(yaml_path).resolve().parent if yaml_path else Path.cwd()
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if path in _LOCAL_BUILDERS:
        files = kwargs.get("data_dir") or kwargs.get("data_files")
        for f in _flatten(files):
            if "://" in f:
                continue
            resolved = _resolve(f, base)
            if not (Path(resolved).exists() or glob.glob(resolved)):
                raise UserError(
                    f"{asker}: task {leaf!r}: data file {f!r} not found "
                    f"(looked in {base} and {Path.cwd()})"
                )
        return
    if Path(path).is_dir() or (base / path).is_dir():
        return  # a local dataset folder
    name = cfg.get("dataset_name")
    key = (path, name if isinstance(name, str) else None)
    if key in checked:
        return
    checked.add(key)
    import datasets

    kwargs.pop("trust_remote_code", None)
    try:
        datasets.load_dataset_builder(path, key[1], **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure means: the data cannot be had
        need = f"{path!r}" + (f" (config {key[1]!r})" if key[1] else "")
        cache = os.environ.get("HF_DATASETS_CACHE") or "$HF_HOME/datasets"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{asker}: task {leaf!r} needs the Hugging Face dataset {need}, which is not in the "
            f"local datasets cache ({cache}) and could not be fetched: load it once with "
            f"datasets.load_dataset on a machine with network access and copy the cache "
            f"({reason})"
        ) from None


def _flatten(files: Any) -> Iterable[str]:
    if isinstance(files, str):
        yield files
    elif isinstance(files, list | tuple):
        for f in files:
            yield from _flatten(f)
    elif isinstance(files, dict):
        for f in files.values():
            yield from _flatten(f)


def check_tasks(
    names: Sequence[str],
    tasks_path: Path | None,
    where: Mapping[str, str] | None = None,
    *,
    confirm_run_unsafe_code: bool = False,
) -> None:
    """:func:`resolve_tasks` for its checks alone (the launcher, before any worker starts)."""
    resolve_tasks(names, tasks_path, where, confirm_run_unsafe_code=confirm_run_unsafe_code)


# ------------------------------------------------------------------------------- building


def load_tasks(
    names: Sequence[str],
    tasks_path: Path | None,
    where: Mapping[str, str] | None = None,
    *,
    confirm_run_unsafe_code: bool = False,
) -> TaskSet:
    """Build each named task, group or tag once (datasets loaded, metrics known).

    Args:
        names: task, group or tag names.
        tasks_path: folder of task YAMLs, or ``None`` for lm-eval's built-in tasks only.
        where: name -> what asked for it (e.g. ``"objective 'code'"``), for error messages.
        confirm_run_unsafe_code: allow tasks marked ``unsafe_code``.

    Raises:
        UserError: everything :func:`resolve_tasks` refuses; a task asked for alone and inside
            a group with different settings.
    """
    where = where or {}
    catalog = resolve_tasks(
        names, tasks_path, where, confirm_run_unsafe_code=confirm_run_unsafe_code
    )
    manager, registry = catalog.manager, catalog.manager.task_index
    tasks: dict[str, LoadedTask] = {}
    groups: dict[str, Any] = {}
    members: dict[str, tuple[str, ...]] = {}
    with tempfile.TemporaryDirectory(prefix="merge-search-tasks-") as tmp:
        for leaf in catalog.configs:
            entry = registry.get(leaf)
            overlay = _overlay(entry, Path(tmp)) if entry is not None else None
            if overlay is not None:
                registry[leaf] = dataclasses.replace(entry, yaml_path=Path(overlay))
        for name in names:
            built = manager.load([name])
            for task_name, task in built["tasks"].items():
                if task_name in tasks:
                    _same_task(tasks[task_name].task, task, task_name, where.get(name, "tasks"))
                    continue
                tasks[task_name] = LoadedTask(task_name, task, metric_keys(task))
            for group_name, group in built["groups"].items():
                groups.setdefault(group_name, group)
            if name in built["groups"]:
                members[name] = tuple(t.task_name for t in built["groups"][name].get_all_tasks())
            else:
                members[name] = tuple(built["tasks"])
    loaded_groups = {}
    for group_name, group in groups.items():
        keys, by_size = group_metric_keys(group, tasks)
        leaves = tuple(t.task_name for t in group.get_all_tasks())
        loaded_groups[group_name] = LoadedGroup(group_name, group, leaves, keys, by_size)
    return TaskSet(tasks, loaded_groups, dict(catalog.kinds), members)


def _same_task(kept: Any, other: Any, name: str, asker: str) -> None:
    """A task built twice (alone and in a group, or in two groups) must be the same task."""
    if kept.dump_config() != other.dump_config():
        raise UserError(
            f"{asker}: task {name!r} appears more than once (alone and inside a group, or in "
            "two groups) with different settings; use one of them"
        )


def _unknown(name: str, where: str, tasks_path: Path | None, local: set[str], manager: Any) -> str:
    close = difflib.get_close_matches(name, manager.all_tasks, n=3)
    listing = ", ".join(sorted(local)) or "none"
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    folder = f"tasks in {str(tasks_path)!r}: {listing}" if tasks_path else "no tasks_path given"
    return f"{where}: unknown lm-eval task {name!r} ({folder}; built-in tasks searched too){hint}"


def _overlay(entry: Any, tmp: Path) -> str | None:
    """The path of an overlay YAML when the task's local data paths need resolving, else None."""
    cfg = entry.cfg or {}
    kwargs = cfg.get("dataset_kwargs")
    if entry.yaml_path is None or cfg.get("dataset_path") not in _LOCAL_BUILDERS or not kwargs:
        return None
    base = Path(entry.yaml_path).resolve().parent
    fixed = dict(kwargs)
    if "data_dir" in fixed:
        fixed["data_dir"] = _resolve(fixed["data_dir"], base)
    elif "data_files" in fixed:
        fixed["data_files"] = _map_paths(fixed["data_files"], base)
    if fixed == kwargs:
        return None
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
