"""``merge-search zoo build OUT_DIR``: the built-in demo pool, built locally."""

from __future__ import annotations

import argparse

from search.zoo.recipe import DEFAULT_RECIPE, RECIPES


def add(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="The built-in demo pool of checkpoints.")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    text = "Build the demo pool (base model + fine-tuned checkpoints) locally, deterministically."
    p = zoo_sub.add_parser("build", help=text, description=text)
    p.add_argument("out_dir", help="where the pool goes (e.g. studies/zoo)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for data, init and training (default: 0)"
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=DEFAULT_RECIPE,
        help="recycle (default, the demo's): 12 checkpoints of the kinds a team throws away — the "
        "mixtures runs at several stages, an early checkpoint, a run on a skill neither objective "
        "measures, a too-hot run, an over-trained run; mixtures: 8 checkpoints of three runs on "
        "mixtures of both skills",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.zoo import build_zoo

    manifest = build_zoo(args.out_dir, seed=args.seed, recipe=args.recipe)
    print(manifest.summary())
    return 0
