"""`merge-search eval --backend vllm`: the same report as the hf back end; refusals up front."""

from __future__ import annotations

import json

import pytest

from search.cli import main

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("vllm_available")]


def _eval(model, tasks_path, backend, capsys):
    rc = main(
        [
            "eval",
            str(model),
            "--tasks-path",
            str(tasks_path),
            "--tasks",
            "demo_code,demo_instruct",
            "--limit",
            "12",
            "--device",
            "cpu",
            "--backend",
            backend,
            "--json",
        ]
    )
    captured = capsys.readouterr()
    return rc, captured


def test_vllm_reports_what_hf_reports(vllm_zoo, demo_tasks_path, capsys):
    rc, hf = _eval(vllm_zoo.checkpoints[1], demo_tasks_path, "hf", capsys)
    assert rc == 0
    rc, vllm = _eval(vllm_zoo.checkpoints[1], demo_tasks_path, "vllm", capsys)
    assert rc == 0
    assert json.loads(vllm.out) == json.loads(hf.out)


def test_vllm_refuses_a_model_it_cannot_run_before_loading_it(demo_zoo, demo_tasks_path, capsys):
    rc, captured = _eval(demo_zoo.base, demo_tasks_path, "vllm", capsys)
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "vLLM's CPU attention does not run the head size" in lines[0]
