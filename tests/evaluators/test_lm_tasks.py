"""Task folders as lm-eval reads them: a task YAML that does not parse is named with its line."""

from __future__ import annotations

import shutil

import pytest

from evaluators.lm_tasks import resolve_tasks
from search.errors import UserError


def test_a_task_yaml_with_a_syntax_error_is_named_with_its_line(demo_tasks_path, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(demo_tasks_path, tasks)
    broken = tasks / "demo_code.yaml"
    lines = broken.read_text().splitlines()
    lines.insert(2, "output_type: [generate_until")  # an unclosed flow sequence on line 3
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as caught:
        resolve_tasks(["demo_code"], tasks)
    message = str(caught.value)
    assert message.startswith(f"{broken}:") and "not valid YAML" in message
    assert "\n" not in message and "unknown lm-eval task" not in message
    line = int(message[len(str(broken)) + 1 :].split(":")[0])
    assert line in (3, 4)  # the problem is seen where the sequence should have closed


def test_tags_such_as_function_are_parsed_not_refused(demo_tasks_path, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(demo_tasks_path, tasks)
    (tasks / "utils.py").write_text("def fn(doc):\n    return doc\n")
    extra = (tasks / "demo_code.yaml").read_text().replace("task: demo_code", "task: demo_fn")
    (tasks / "demo_fn.yaml").write_text(extra + "process_docs: !function utils.fn\n")
    catalog = resolve_tasks(["demo_code", "demo_fn"], tasks)
    assert {"demo_code", "demo_fn"} <= set(catalog.configs)
