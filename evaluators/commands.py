"""``merge-search eval``: score one saved model on lm-eval tasks before a study."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from search.errors import UserError


def eval_command(args: argparse.Namespace) -> int:
    """Score ``args.model_dir`` on ``args.tasks``; print a table or JSON."""
    from evaluators.builder import build_evaluator
    from evaluators.spec import EvalSpec, ObjectiveSpec, TaskRef

    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(
            f"model_dir {str(model_dir)!r}: expected a Hugging Face model folder with config.json"
        )
    tasks_path = Path(args.tasks_path)
    if not tasks_path.is_dir():
        raise UserError(
            f"--tasks-path {str(tasks_path)!r}: expected a folder of lm-eval task YAMLs"
        )
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--tasks: expected comma-separated task names")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: expected a positive number of examples")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected a positive number")
    objectives = [
        ObjectiveSpec(name=_objective_name(n, i), tasks=(TaskRef(task=n),))
        for i, n in enumerate(names)
    ]
    spec = EvalSpec(tasks_path=tasks_path, limit=args.limit, batch_size=args.batch_size)
    model, tokenizer = load_model(model_dir, args.device)
    scores = build_evaluator(objectives, spec, model, tokenizer).evaluate(model, tokenizer)
    if args.json:
        report = {"model": str(model_dir), "limit": args.limit, "scores": scores.tasks}
        print(json.dumps(report, indent=2))
    else:
        width = max(len(k) for k in scores.tasks) + 2
        print(f"{'task/metric':<{width}}score")
        for key, value in scores.tasks.items():
            print(f"{key:<{width}}{value:.4f}")
    return 0


def load_model(model_dir: Path, device: str = "auto") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a folder on ``device`` (``auto``: CUDA if present), eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device).eval()
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"model_dir {str(model_dir)!r}: cannot load it ({reason})") from None
    return model, tokenizer


def _objective_name(task: str, index: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", task)
    return name if name else f"task{index}"
