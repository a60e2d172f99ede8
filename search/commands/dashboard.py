"""``merge-search dashboard CONFIG_OR_URL``: optuna-dashboard on the study's storage."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    text = "Start optuna-dashboard on the study's storage (127.0.0.1)."
    p = sub.add_parser("dashboard", help=text, description=text)
    p.add_argument("target", help="study config YAML or storage URL")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.report.dashboard import serve

    serve(args.target, args.port, announce=lambda line: print(line, flush=True))
    return 0
