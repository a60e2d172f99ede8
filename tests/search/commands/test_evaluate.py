"""`merge-search eval` through search.cli.main."""

from __future__ import annotations

import json

import pytest

from search.cli import main


def test_json_scores_of_a_saved_model(demo_zoo, demo_tasks_path, capsys):
    rc = main(
        [
            "eval",
            str(demo_zoo.checkpoints[0]),
            "--tasks-path",
            str(demo_tasks_path),
            "--tasks",
            "demo_code,demo_instruct",
            "--limit",
            "3",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["limit"] == 3
    assert set(out["scores"]) == {"demo_code/exact_match", "demo_instruct/exact_match"}
    assert all(0.0 <= v <= 1.0 for v in out["scores"].values())


def test_table_output(demo_zoo, demo_tasks_path, capsys):
    rc = main(
        [
            "eval",
            str(demo_zoo.base),
            "--tasks-path",
            str(demo_tasks_path),
            "--tasks",
            "demo_code",
            "--limit",
            "2",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task/metric", "score"]
    assert lines[1].startswith("demo_code/exact_match ")


def test_unknown_task_exits_2_naming_it(demo_zoo, demo_tasks_path, capsys):
    rc = main(
        ["eval", str(demo_zoo.base), "--tasks-path", str(demo_tasks_path), "--tasks", "demo_kode"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task 'demo_kode'" in err and "demo_code" in err


def test_bad_folders_exit_2(demo_tasks_path, tmp_path, capsys):
    args = ["--tasks", "demo_code"]
    assert main(["eval", str(tmp_path), "--tasks-path", str(demo_tasks_path), *args]) == 2
    assert "expected a Hugging Face model folder" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main(["eval", str(tmp_path), "--tasks-path", str(tmp_path / "nope"), *args]) == 2
    assert "--tasks-path" in capsys.readouterr().err


def _loglikelihood_task(folder):
    """A task scored by log-likelihood (continuous), so prompt changes show in the score."""
    import yaml

    folder.mkdir(exist_ok=True)
    rows = [{"q": "1+2=", "a": "3"}, {"q": "ab+c=", "a": "abc"}, {"q": "dog:", "a": "god"}]
    (folder / "ll.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": "ll_task",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "ll.jsonl")}},
        "test_split": "test",
        "output_type": "loglikelihood",
        "doc_to_text": "{{q}}",
        "doc_to_target": " {{a}}",
        "metric_list": [{"metric": "perplexity"}],
    }
    unsafe = {**task, "task": "ll_unsafe", "unsafe_code": True}
    (folder / "ll_task.yaml").write_text(yaml.safe_dump(task))
    (folder / "ll_unsafe.yaml").write_text(yaml.safe_dump(unsafe))
    return folder


def test_chat_template_flags_change_the_prompts(demo_zoo, tmp_path, capsys):
    tasks = _loglikelihood_task(tmp_path / "tasks")
    base = ["eval", str(demo_zoo.base), "--tasks-path", str(tasks), "--tasks", "ll_task", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*base, "--apply-chat-template", "--system-instruction", "Be brief."]) == 0
    chat = json.loads(capsys.readouterr().out)
    key = "ll_task/perplexity"
    assert chat["scores"][key] != plain["scores"][key]
    assert chat["examples"][key] == plain["examples"][key] == 3
    # the standard errors come from each run's own per-example log-likelihoods
    assert None not in (chat["stderr"][key], plain["stderr"][key])
    assert chat["stderr"][key] != pytest.approx(plain["stderr"][key])


def test_chat_template_on_a_tokenizer_without_one_exits_2_naming_the_checkpoint(
    tiny_zoo, tmp_path, capsys
):
    tasks = _loglikelihood_task(tmp_path / "tasks")
    args = ["eval", str(tiny_zoo.base), "--tasks-path", str(tasks), "--tasks", "ll_task"]
    assert main([*args, "--apply-chat-template"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"merge-search: error: {tiny_zoo.base}: ")
    assert "has no chat template" in err


def test_unsafe_tasks_and_multiturn_need_their_flags(demo_zoo, tmp_path, capsys):
    tasks = _loglikelihood_task(tmp_path / "tasks")
    args = ["eval", str(demo_zoo.base), "--tasks-path", str(tasks)]
    assert main([*args, "--tasks", "ll_unsafe"]) == 2
    assert "confirm-run-unsafe-code" in capsys.readouterr().err
    assert main([*args, "--tasks", "ll_unsafe", "--confirm-run-unsafe-code", "--json"]) == 0
    assert "ll_unsafe/perplexity" in json.loads(capsys.readouterr().out)["scores"]
    assert main([*args, "--tasks", "ll_task", "--fewshot-as-multiturn"]) == 2
    assert "--fewshot-as-multiturn: true needs --apply-chat-template" in capsys.readouterr().err
