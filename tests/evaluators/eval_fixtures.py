"""Helpers for the evaluator tests: a task folder with a continuous-valued task, resident models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(state[name])
