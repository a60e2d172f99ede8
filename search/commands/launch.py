"""``merge-search launch`` and ``merge-search worker``: run a study to its budget."""

from __future__ import annotations

import argparse
import sys
from contextlib import AbstractContextManager
from typing import Any

from search.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    text = "Create or resume a study and run workers until the budget is spent."
    p = sub.add_parser("launch", help=text, description=text)
    p.add_argument("config", help="study config YAML (see README)")
    p.add_argument("--n-trials", type=int, default=None, help="override budget.n_trials")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this host")
    p.add_argument("--storage", default=None, help="override the config's storage URL")
    p.set_defaults(run=run)

    text = "Join an existing study as one worker (from another shell or host)."
    p = sub.add_parser("worker", help=text, description=text)
    p.add_argument("config", help="study config YAML")
    p.add_argument("--storage", default=None, help="storage URL of the study")
    p.add_argument("--n-trials", type=int, default=None, help="override budget.n_trials")
    p.set_defaults(run=run_join)


class Terminal:
    """The launcher's events on standard error, with a progress bar (a ``Console`` of
    :mod:`search.study.launch`)."""

    def say(self, line: str) -> None:
        print(line, file=sys.stderr)

    def progress(self, cfg: Any, study: Any) -> AbstractContextManager[Any]:
        from search.commands.progress import progress_bar

        return progress_bar(cfg, study)


def run(args: argparse.Namespace) -> int:
    from search.study.config import load_config
    from search.study.launch import launch

    if args.workers < 1:
        raise UserError(f"--workers: expected at least 1 (got {args.workers})")
    cfg = load_config(args.config, n_trials=args.n_trials, storage=args.storage)
    terminal = Terminal()
    result = launch(cfg, args.config, terminal, n_workers=args.workers)
    terminal.say(result.summary)
    return result.code


def run_join(args: argparse.Namespace) -> int:
    from search.study.config import load_config
    from search.study.launch import join

    cfg = load_config(args.config, n_trials=args.n_trials, storage=args.storage)
    terminal = Terminal()
    result = join(cfg, args.config, terminal)
    terminal.say(result.summary)
    return result.code
