"""The `merge-search` command line: wires the verbs of :mod:`search.commands`.

Each verb's module declares its arguments and its handler (``add``); handlers import the
library only when their command runs, so ``merge-search --help`` stays instant (no torch,
transformers, Optuna or lm-eval import). A handler takes the parsed
``argparse.Namespace`` and returns the exit status; a :class:`~search.errors.UserError` becomes
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from search.commands import dashboard, evaluate, export, launch, merge, pareto, zoo
from search.errors import DeprecatedSetting, UserError

EXIT_USAGE = 2  # bad input: same status argparse uses
VERBS = (merge, zoo, evaluate, launch, pareto, export, dashboard)  # in --help order


def show_progress() -> None:
    """The library reports long work (re-scoring, ...) as log records of the ``search`` logger;
    the command line shows them on stderr, one line each."""
    logger = logging.getLogger("search")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def show_deprecations() -> None:
    """A deprecated setting (:class:`~search.errors.DeprecatedSetting`) is one stderr line."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, DeprecatedSetting):
            print(f"merge-search: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merge-search",
        description="Search merge weights over a pool of checkpoints with Optuna and lm-eval.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_progress()
    show_deprecations()
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"merge-search: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("merge-search: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
