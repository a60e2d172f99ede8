"""What optuna-dashboard shows as notes: the study's objectives, each trial's merge.

The study's note (``optuna_dashboard.save_note``) holds the objectives' definitions, written
when the study is created; once ``pareto`` or ``export`` has judged a merge on the test split,
:mod:`search.report` writes it again with the verdict table below them. Each trial's note is its
merge as the mergekit YAML an export of it would hold (``merge-search merge`` rebuilds it),
written by the worker as soon as the trial's plan is recorded.

optuna-dashboard keeps every note in the study's system attrs (a version and chunks of 2,045
characters per note). ``save_note`` reads all of them twice to find the next version and to
clear old chunks, so its cost grows with the number of trials noted; a trial's note is written
once, to a trial that has none, so :func:`write_trial_note` writes its chunks and version 1
without reading anything: two storage writes for a YAML under 2,045 characters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import optuna

    from search.engine.plan import MergePlan
    from search.engine.pool import CheckpointPool
    from search.engine.registry import MergeMethod
    from search.study.config import StudyConfig


def study_note(cfg: StudyConfig, verdict: str | None = None) -> str:
    """The study's note: its objectives (and constraints) as the config defines them, then the
    ``verdict`` (markdown) when there is one."""
    objectives = [{"name": o.name, "direction": o.direction, **_defined(o)} for o in cfg.objectives]
    lines = [
        f"## Study {cfg.name}: what each objective scores",
        "",
        f"{len(cfg.checkpoints)} checkpoints merged with `{cfg.merge.method}`; every trial's "
        "note holds its merge as a mergekit config.",
        "",
        "```yaml",
        yaml.safe_dump(objectives, sort_keys=False).rstrip(),
        "```",
    ]
    if cfg.constraints:
        constraints = [_defined(c) for c in cfg.constraints]
        lines += ["", "Constraints:", "", "```yaml"]
        lines += [yaml.safe_dump(constraints, sort_keys=False).rstrip(), "```"]
    if verdict:
        lines += ["", verdict.rstrip()]
    return "\n".join(lines) + "\n"


def write_study_note(study: optuna.Study, body: str) -> None:
    """Replace the study's note (``optuna_dashboard.save_note``; once per command, not per
    trial)."""
    from optuna_dashboard import save_note

    save_note(study, body)


def trial_note(plan: MergePlan, pool: CheckpointPool, method: MergeMethod | None = None) -> str:
    """A trial's note: its merge as the ``mergekit_config.yml`` of an export (``method``: the
    plan's method when it is not built in)."""
    from search.export.folder import mergekit_yaml_of

    text = mergekit_yaml_of(plan, pool, method=method)
    return f"`{plan.method}` merge, plan key `{plan.key}`:\n\n```yaml\n{text.rstrip()}\n```\n"


def write_trial_note(trial: optuna.Trial, body: str) -> None:
    """Write the note of a trial that has none yet, without reading the study's other notes:
    the body's chunks first, then version 1 (a reader in between sees no note, never half of
    one). optuna-dashboard's own key layout (``optuna_dashboard._note``), so its API reads it."""
    from optuna_dashboard._note import note_ver_key, split_body

    storage, study_id = trial.storage, trial.study._study_id
    for key, chunk in split_body(body, trial._trial_id).items():
        storage.set_study_system_attr(study_id, key, chunk)
    storage.set_study_system_attr(study_id, note_ver_key(trial._trial_id), 1)


def _defined(spec: Any) -> dict[str, Any]:
    """A config model's fields that are set, as plain data (paths as strings)."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    return {k: v for k, v in data.items() if k not in ("name", "direction")}
