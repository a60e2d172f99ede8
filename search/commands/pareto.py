"""``merge-search pareto CONFIG``: the Pareto front beside the inputs and the uniform merge."""

from __future__ import annotations

import argparse
import json

from search.report.frontier import KNEE_RULE


def add(sub: argparse._SubParsersAction) -> None:
    text = (
        "Print the Pareto front (knee marked) beside the input checkpoints and the uniform merge."
    )
    description = (
        f"{text} The knee (what export --knee exports) is {KNEE_RULE}. With eval.heldout / "
        "eval.test the front and the inputs are re-scored on those splits; the re-scores are "
        "cached in the study (user attrs heldout_scores, test_scores, baseline_scores), so the "
        "first run writes to the study's storage and later runs are instant. --no-heldout skips "
        "the re-scoring."
    )
    p = sub.add_parser("pareto", help=text, description=description)
    p.add_argument("config", help="study config YAML")
    p.add_argument("--storage", default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default=None, help="write a plot: FILE.png or FILE.html")
    p.add_argument("--no-heldout", action="store_true", help="skip held-out re-scoring")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.report.pareto_report import pareto
    from search.report.table import format_report

    report = pareto(args.config, args.storage, heldout=not args.no_heldout, plot=args.plot)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(format_report(report))
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0
