"""``merge-search zoo build OUT_DIR``: the built-in demo pool, built locally."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="The built-in demo pool of checkpoints.")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    text = "Build the demo pool (base model + fine-tuned checkpoints) locally, deterministically."
    p = zoo_sub.add_parser("build", help=text, description=text)
    p.add_argument("out_dir", help="where the pool goes (e.g. studies/zoo)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for data, init and training (default: 0)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.zoo import build_zoo

    build_zoo(args.out_dir, seed=args.seed)  # prints its own progress and score table
    return 0
