"""The `merge-search` command line: argument parsing only; each command lives with its feature.

Handlers are named as ``"module:function"`` and imported only when their command runs, so
``merge-search --help`` stays instant (no torch, transformers or lm-eval import).
A handler takes the parsed ``argparse.Namespace`` and returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

EXIT_USAGE = 2  # bad input: same status argparse uses


def _add(sub: argparse._SubParsersAction, name: str, handler: str, help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merge-search",
        description="Search merge weights over a pool of checkpoints with Optuna and lm-eval.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "merge", "search.export:merge_command",
             "Merge checkpoints from a mergekit-style YAML and export a Hugging Face folder.")
    p.add_argument("config", help="mergekit YAML (merge_method, base_model, models, parameters, dtype)")
    p.add_argument("out_dir", help="folder to write; refused if it exists unless --force")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--dtype", default=None,
                   help="compute/storage dtype: float32, bfloat16, float16 (default: the YAML's dtype)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")

    zoo = sub.add_parser("zoo", help="The built-in demo pool of checkpoints.")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    p = _add(zoo_sub, "build", "search.zoo:build_command",
             "Build the demo pool (base model + fine-tuned checkpoints) locally, deterministically.")
    p.add_argument("out_dir", help="where the pool goes (e.g. studies/zoo)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, init and training (default: 0)")

    p = _add(sub, "eval", "evaluators.commands:eval_command",
             "Score one saved model on lm-eval tasks.")
    p.add_argument("model_dir", help="Hugging Face model folder")
    p.add_argument("--tasks-path", required=True, help="folder of lm-eval task YAMLs")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = _add(sub, "launch", "search.launch:launch_command",
             "Create or resume a study and run workers until the budget is spent.")
    p.add_argument("config", help="study config YAML (see README)")
    p.add_argument("--n-trials", type=int, default=None, help="override budget.n_trials")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this host")
    p.add_argument("--storage", default=None, help="override the config's storage URL")

    p = _add(sub, "worker", "search.launch:worker_command",
             "Join an existing study as one worker (from another shell or host).")
    p.add_argument("config", help="study config YAML")
    p.add_argument("--storage", default=None, help="storage URL of the study")
    p.add_argument("--n-trials", type=int, default=None, help="override budget.n_trials")

    p = _add(sub, "pareto", "search.report:pareto_command",
             "Print the Pareto front (knee marked) beside the input checkpoints and the uniform merge.")
    p.add_argument("config", help="study config YAML")
    p.add_argument("--storage", default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default=None, help="write a plot: FILE.png or FILE.html")
    p.add_argument("--no-heldout", action="store_true", help="skip held-out re-scoring")

    p = _add(sub, "export", "search.report:export_command",
             "Export one trial's merge as a Hugging Face model folder.")
    p.add_argument("config", help="study config YAML")
    pick = p.add_mutually_exclusive_group(required=True)
    pick.add_argument("--trial", type=int, help="trial number")
    pick.add_argument("--best", metavar="OBJECTIVE", help="best trial on one objective")
    pick.add_argument("--knee", action="store_true", help="knee point of the Pareto front")
    pick.add_argument("--prefer", metavar="A=0.7,B=0.3",
                      help="best trial by a weighted sum of normalized objectives")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--storage", default=None)
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")

    p = _add(sub, "dashboard", "search.report:dashboard_command",
             "Start optuna-dashboard on the study's storage (127.0.0.1).")
    p.add_argument("target", help="study config YAML or storage URL")
    p.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = args.handler.split(":")
    from search.errors import UserError

    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"merge-search: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("merge-search: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
