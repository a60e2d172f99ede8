"""`merge-search eval` through search.cli.main."""

from __future__ import annotations

import json

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
