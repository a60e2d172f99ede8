"""Helpers for the evaluator tests: a task folder with a continuous-valued task, resident models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.checkpoint_files import read_tensors
from tests.toy_tasks import TOY_CHOICES, write_choice_task

# A real lm-eval task with continuous scores (rolling log-likelihood), so that two weight sets
# of a tiny model give different values; its data sits in a subfolder (relative to the YAML).
PPL_TASK = """\
task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/tiny_ppl.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""

TEXTS = [
    "a=4;b=a+3;print(b)?7",
    "reverse: stone?enots",
    "upper: abc?ABC",
    "c=2;c=c+5;print(c)?7",
    "sort: dcba?abcd",
    "repeat: ab?abab",
]


def write_task_folder(root: Path, demo_tasks_path: Path) -> Path:
    """``root``: the demo tasks (copied) plus ``tiny_ppl``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for f in demo_tasks_path.iterdir():
        shutil.copy(f, root / f.name)
    (root / "tiny_ppl.yaml").write_text(PPL_TASK)
    (root / "data").mkdir(exist_ok=True)
    lines = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS)
    (root / "data" / "tiny_ppl.jsonl").write_text(lines)
    return root


def load(folder: Path) -> tuple[Any, Any]:
    """A fresh ``(model, tokenizer)`` from a saved folder, eval mode, float32, CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def copy_weights_in_place(model: Any, folder: Path) -> None:
    """Write a saved checkpoint's tensors into ``model``'s parameters (same storage)."""
    import torch

    state = read_tensors(folder)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(state[name])


# A small lm-eval suite of the kinds users bring: multiple-choice tasks of different sizes, a
# group of them (size-weighted), a nested group, a tag, a log-likelihood task whose prompt a
# chat template changes, a code task that runs the model's program (unsafe_code, local metric)
# and a group that lists an unknown task. Data paths are absolute: lm-eval's own
# simple_evaluate reads these YAMLs too.
PICKS = TOY_CHOICES[:12]
PROGRAMS = [  # the prompt ends a complete program in a comment: whatever follows runs as one
    ("print(2+3) #", "5"),
    ("print(4*4) #", "16"),
    ("print(7-9) #", "-2"),
    ("print(1+1", "2"),  # the model must close the call
]
RUN_PROGRAM = '''\
"""Metric of the code task: run prompt + completion as a Python program, compare its output."""

import subprocess
import sys


def run_program(doc, results):
    program = doc["prompt"] + results[0]
    try:
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return {"pass": 0.0}
    return {"pass": float(done.returncode == 0 and done.stdout.strip() == doc["answer"])}
'''


def write_suite_folder(root: Path) -> Path:
    """``root``: the suite described above; returns ``root``."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)

    def jsonl(name: str, rows: list[dict[str, Any]]) -> Path:
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    def dump(name: str, data: dict[str, Any]) -> None:
        (root / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    both = {
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        "metadata": {"version": 1.0},
    }
    write_choice_task(root, "pick_a", PICKS[:8], tag="pick_tag", **both)
    write_choice_task(root, "pick_b", PICKS[8:], tag="pick_tag", **both)
    write_choice_task(root, "pick_c", PICKS[2:7], **both)
    agg = [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}]
    dump(
        "pick_group",
        {"group": "pick_group", "task": ["pick_a", "pick_b"], "aggregate_metric_list": agg},
    )
    dump(
        "pick_nested",
        {"group": "pick_nested", "task": ["pick_group", "pick_c"], "aggregate_metric_list": agg},
    )
    dump(
        "bad_group",
        {"group": "bad_group", "task": ["pick_a", "pick_zz"], "aggregate_metric_list": agg},
    )
    likes = [{"question": q, "answer": c[a]} for q, c, a in PICKS]
    dump(
        "like_c",
        {
            "task": "like_c",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(jsonl("like_c", likes))}},
            "test_split": "test",
            "output_type": "loglikelihood",
            "doc_to_text": "{{question}}",
            "doc_to_target": " {{answer}}",
            "metric_list": [{"metric": "perplexity"}, {"metric": "acc"}],
            "metadata": {"version": 1.0},
        },
    )
    (root / "utils.py").write_text(RUN_PROGRAM)
    programs = [{"prompt": p, "answer": a} for p, a in PROGRAMS]
    (root / "run_code.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "run_code",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(jsonl("run_code", programs))}},
                "test_split": "test",
                "output_type": "generate_until",
                "doc_to_text": "{{prompt}}",
                "doc_to_target": "{{answer}}",
                "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 8},
                "unsafe_code": True,
                "metric_list": [
                    {"metric": "pass", "aggregation": "mean", "higher_is_better": True}
                ],
                "metadata": {"version": 1.0},
            },
            sort_keys=False,
        )
        + "process_results: !function utils.run_program\n"
    )
    return root
