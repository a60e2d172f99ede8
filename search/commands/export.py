"""``merge-search export CONFIG``: one trial's merge as a Hugging Face model folder."""

from __future__ import annotations

import argparse
from typing import Any

from search.report.frontier import KNEE_RULE, PREFER_RULE


def add(sub: argparse._SubParsersAction) -> None:
    text = "Export one trial's merge as a Hugging Face model folder."
    description = (
        f"{text} With eval.heldout, --knee and --prefer choose on the front's held-out "
        "re-scores; with eval.test the chosen merge and the inputs are scored on the test split. "
        "Re-scores are cached in the study (user attrs heldout_scores / test_scores), so the "
        "first run writes to the study's storage and later runs are instant."
    )
    p = sub.add_parser("export", help=text, description=description)
    p.add_argument("config", help="study config YAML")
    pick = p.add_mutually_exclusive_group(required=True)
    pick.add_argument("--trial", type=int, help="trial number")
    pick.add_argument("--best", metavar="OBJECTIVE", help="best trial on one objective")
    pick.add_argument(
        "--knee",
        action="store_true",
        help="the default choice: " + KNEE_RULE,
    )
    pick.add_argument(
        "--prefer",
        metavar="A=0.7,B=0.3",
        help="weighted choice: " + PREFER_RULE,
    )
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--storage", default=None)
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16", "float64"),
        help="dtype of the written weights; the merge is computed in float32 and rounded once "
        "(default: the checkpoints' own dtype)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.report.choose import export_chosen
    from search.report.scores import cached_heldout

    row, how, path, view, test = export_chosen(
        args.config,
        args.out,
        storage=args.storage,
        trial=args.trial,
        best=args.best,
        knee=args.knee,
        prefer=args.prefer,
        force=args.force,
        dtype=args.dtype,
    )
    values = ", ".join(f"{n}={v:.4f}" for n, v in zip(view.names, row.values, strict=True))
    heldout = cached_heldout(view).get(row.plan_key)
    if heldout:
        shown = ", ".join(f"{n}={heldout.objectives[n]:.4f}" for n in view.names)
        values = f"{values}; held-out {shown}"
    print(f"exported trial {row.number} ({how}; {values}) to {path}")
    if test:
        print(comparison_lines(test, view.names))
    return 0


def comparison_lines(test: Any, names: tuple[str, ...]) -> str:
    """The test split comparison: the chosen merge, then each input and its lead over it."""
    from search.report.table import lead_text, verdict_text

    chosen = test.chosen
    examples = ", ".join(f"{k} {v}" for k, v in chosen.examples.items())
    lines = [
        "test split (eval.test, "
        + (f"examples per task: {examples}" if examples else "no example counts")
        + f"): chosen trial {chosen.trial}: "
        + ", ".join(f"{n}={chosen.objectives[n]:.4f}" for n in names)
        + f", mean={chosen.mean:.4f}"
    ]
    for b in test.baselines:
        lines.append(
            f"  {b.label}: mean={b.mean:.4f} (chosen - it: {lead_text(b, 'mean')}; "
            + ", ".join(f"{n} {lead_text(b, n)}" for n in names)
            + ")"
        )
    lines.append(verdict_text(test))
    return "\n".join(lines)
