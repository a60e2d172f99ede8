"""``merge-search eval MODEL_DIR``: score one saved model on lm-eval tasks before a study."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from search.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    text = "Score one saved model on lm-eval tasks, groups or tags."
    p = sub.add_parser("eval", help=text, description=text)
    p.add_argument("model_dir", help="Hugging Face model folder")
    p.add_argument("--tasks-path", default=None, help="folder of lm-eval task YAMLs")
    p.add_argument("--tasks", required=True, help="comma-separated task, group or tag names")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    p.add_argument("--num-fewshot", type=int, default=None, help="default: each task's own")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None, help="model context (tokens)")
    p.add_argument(
        "--apply-chat-template",
        nargs="?",
        const=True,
        default=False,
        metavar="NAME",
        help="format prompts with the tokenizer's chat template (or the one named NAME)",
    )
    p.add_argument("--system-instruction", default=None, help="system prompt for every request")
    p.add_argument(
        "--fewshot-as-multiturn",
        action="store_true",
        default=None,
        help="few-shot examples as chat turns (the default with --apply-chat-template)",
    )
    p.add_argument(
        "--confirm-run-unsafe-code",
        action="store_true",
        help="run tasks marked unsafe_code (they execute what the model writes)",
    )
    p.add_argument(
        "--backend",
        choices=("hf", "vllm"),
        default="hf",
        help="who runs the requests: transformers (hf) or a vLLM engine (pip install -e .[vllm])",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class SavedModelScores:
    """What ``--json`` prints: each task score with its standard error and number of examples."""

    model: str
    limit: int | None
    scores: dict[str, float]
    stderr: dict[str, float | None]
    examples: dict[str, int]


def run(args: argparse.Namespace) -> int:
    from evaluators import check_objectives
    from evaluators.saved import score_saved_model
    from search.engine.device import resolve_device

    objectives, spec = _request(args)
    check_objectives(objectives, spec, Path(args.model_dir))  # before the model is loaded
    device = str(resolve_device(args.device))
    scores = score_saved_model(args.model_dir, objectives, spec, device)
    counts = {k: len(v) for k, v in scores.examples.items()}
    stderr = {k: (None if math.isnan(v) else v) for k, v in scores.task_stderr.items()}
    if args.json:
        report = SavedModelScores(str(args.model_dir), args.limit, scores.tasks, stderr, counts)
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        width = max(len(k) for k in scores.tasks) + 2
        print(f"{'task/metric':<{width}}score")
        for key, value in scores.tasks.items():
            se = stderr.get(key)
            shown = f" ± {se:.4f}" if se is not None else ""
            print(f"{key:<{width}}{value:.4f}{shown}  (n={counts.get(key, 0)})")
    return 0


def _request(args: argparse.Namespace) -> tuple[list, object]:
    """The objectives (one per name) and the evaluation settings, checked (``UserError``)."""
    from evaluators.spec import EvalSpec, ObjectiveSpec, TaskRef, check_chat_settings

    tasks_path = Path(args.tasks_path) if args.tasks_path else None
    if tasks_path is not None and not tasks_path.is_dir():
        raise UserError(
            f"--tasks-path {str(tasks_path)!r}: expected a folder of lm-eval task YAMLs"
        )
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--tasks: expected comma-separated task names")
    for flag, value, low in (
        ("--limit", args.limit, 1),
        ("--num-fewshot", args.num_fewshot, 0),
        ("--batch-size", args.batch_size, 1),
        ("--max-length", args.max_length, 2),
    ):
        if value is not None and value < low:
            raise UserError(f"{flag} {value}: expected a number >= {low}")
    try:
        check_chat_settings(args.apply_chat_template, args.fewshot_as_multiturn, "--")
    except ValueError as exc:
        raise UserError(str(exc).replace("_", "-")) from None
    objectives = [
        ObjectiveSpec(name=_objective_name(n, i), tasks=(TaskRef(task=n),))
        for i, n in enumerate(names)
    ]
    spec = EvalSpec(
        tasks_path=tasks_path,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        max_length=args.max_length,
        apply_chat_template=args.apply_chat_template,
        system_instruction=args.system_instruction,
        fewshot_as_multiturn=args.fewshot_as_multiturn,
        confirm_run_unsafe_code=args.confirm_run_unsafe_code,
        backend=args.backend,
    )
    return objectives, spec


def _objective_name(task: str, index: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", task)
    return name if name else f"task{index}"
