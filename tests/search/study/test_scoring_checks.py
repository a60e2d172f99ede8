"""Suites a study cannot run stop `merge-search launch` with one line before anything is written.

Checked before any worker starts (names, group members, consent to run code, data in the local
caches), or by the first worker before the study exists (the tokenizer's chat template).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from search.cli import main
from tests.search.study_fixtures import build_pool_and_tasks, study_config, write_config


@pytest.fixture(scope="module")
def workdir(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("checks")
    paths = build_pool_and_tasks(root, tiny_zoo)
    tasks = Path(paths["tasks_path"])
    rows = [{"prompt": "print(1) #", "answer": "1"}]
    (tasks / "code.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code_task = {
        "task": "run_code",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(tasks / "code.jsonl")}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "unsafe_code": True,
        "metric_list": [{"metric": "exact_match"}],
    }
    (tasks / "run_code.yaml").write_text(yaml.safe_dump(code_task))
    group = {"group": "bad_group", "task": ["c1_pick", "c1_pik"]}
    (tasks / "bad_group.yaml").write_text(yaml.safe_dump(group))
    mixed = {"group": "mixed_group", "task": ["c1_pick", "arc_easy"]}  # a built-in member
    (tasks / "mixed_group.yaml").write_text(yaml.safe_dump(mixed))
    return {"root": root, "paths": paths}


def _launch(workdir: dict[str, Any], name: str, capsys: Any, **change: Any) -> tuple[int, str]:
    storage = f"sqlite:///{workdir['root'] / 'studies' / f'{name}.db'}"
    data = study_config(workdir["paths"], name, storage)
    if "tasks" in change:
        data["objectives"][0]["tasks"] = change.pop("tasks")
    data["eval"].update(change)
    config = write_config(workdir["root"] / f"{name}.yaml", data)
    rc = main(["launch", str(config)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert not Path(storage[len("sqlite:///") :]).exists()  # nothing written
    assert [ln for ln in lines if "error" in ln] == lines[-1:]  # one line says what is wrong
    assert lines[-1].startswith(f"merge-search: error: {config}: ") or "worker" in name
    return rc, lines[-1]


def test_unsafe_task_without_consent(workdir: dict[str, Any], capsys: Any) -> None:
    rc, err = _launch(workdir, "unsafe", capsys, tasks=[{"task": "run_code"}])
    assert rc == 2
    assert "task 'run_code' runs code the model writes" in err
    assert "eval.confirm_run_unsafe_code: true" in err


def test_group_that_lists_an_unknown_task(workdir: dict[str, Any], capsys: Any) -> None:
    rc, err = _launch(workdir, "badgroup", capsys, tasks=[{"task": "bad_group"}])
    assert rc == 2
    assert "objective 'pick': group 'bad_group'" in err
    assert "lists unknown lm-eval task 'c1_pik'; did you mean c1_pick?" in err


def test_built_in_task_without_local_data(workdir: dict[str, Any], capsys: Any) -> None:
    rc, err = _launch(workdir, "builtin", capsys, tasks=[{"task": "arc_easy"}])
    assert rc == 2
    assert (
        "task 'arc_easy' needs the Hugging Face dataset 'allenai/ai2_arc' (config 'ARC-Easy')"
        in err
    )
    assert "not in the local datasets cache" in err


def test_chat_template_on_a_tokenizer_without_one_names_the_checkpoint(
    workdir: dict[str, Any], capsys: Any
) -> None:
    rc, err = _launch(workdir, "chat_worker", capsys, apply_chat_template=True)
    assert rc == 2
    base = workdir["paths"]["base_model"]
    assert (
        f"{base}: eval.apply_chat_template is true but this tokenizer has no chat template" in err
    )


def test_local_group_with_a_built_in_task_is_checked_like_one(
    workdir: dict[str, Any], capsys: Any
) -> None:
    rc, err = _launch(workdir, "mixedgroup", capsys, tasks=[{"task": "mixed_group"}])
    assert rc == 2
    assert "unknown" not in err  # found among lm-eval's own tasks, then its data is checked
    assert "task 'arc_easy' needs the Hugging Face dataset 'allenai/ai2_arc'" in err
