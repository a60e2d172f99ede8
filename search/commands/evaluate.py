"""``merge-search eval MODEL_DIR``: score one saved model on lm-eval tasks before a study."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from search.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    text = "Score one saved model on lm-eval tasks."
    p = sub.add_parser("eval", help=text, description=text)
    p.add_argument("model_dir", help="Hugging Face model folder")
    p.add_argument("--tasks-path", required=True, help="folder of lm-eval task YAMLs")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from evaluators.saved import score_saved_model
    from evaluators.spec import EvalSpec, ObjectiveSpec, TaskRef
    from search.engine.device import resolve_device

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
    device = str(resolve_device(args.device))
    scores = score_saved_model(args.model_dir, objectives, spec, device)
    if args.json:
        report = {"model": str(args.model_dir), "limit": args.limit, "scores": scores.tasks}
        print(json.dumps(report, indent=2))
    else:
        width = max(len(k) for k in scores.tasks) + 2
        print(f"{'task/metric':<{width}}score")
        for key, value in scores.tasks.items():
            print(f"{key:<{width}}{value:.4f}")
    return 0


def _objective_name(task: str, index: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", task)
    return name if name else f"task{index}"
