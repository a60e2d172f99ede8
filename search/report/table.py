"""The text table of a Pareto report (``merge-search pareto``), and the lines the test split
comparison shares with ``export`` and the model card."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.report.pareto_report import Report
    from search.report.scores import Baseline, Lead, Verdict, VerdictEntry

TOP_COEFFICIENTS = 3  # coefficients shown per front row in the table


def format_report(report: Report) -> str:
    """The report as a plain-text table."""
    arrows = ", ".join(
        f"{o.name} {'↑' if o.direction == 'maximize' else '↓'}" for o in report.objectives
    )
    judged = ", judged on the held-out re-scores: what export --knee picks"
    return "\n".join(
        [
            f"study {report.study} ({report.storage}): {counts_text(report.trial_counts)}; "
            f"objectives: {arrows}",
            f"Pareto front: {len(report.front)} trial(s); * = knee (the largest mean lead over the "
            f"uniform merge among the members ahead of it on every objective"
            f"{judged if report.knee_split == 'heldout' else ''})",
            *_aligned(_front_table(report)),
            *_notes(report),
        ]
    )


def _front_table(report: Report) -> list[list[str]]:
    """Rows of the front (knee starred) then of the baselines, with held-out columns if any."""
    names = report.names
    has_heldout = any(r.heldout for r in report.front)
    head = ["", "trial", *names]
    if has_heldout:
        head += [f"held-out {n}" for n in names]
    head.append("largest coefficients")
    table = [head]
    for r in report.front:
        close = r.indistinct_from
        trial = str(r.trial) + (f" ≈{','.join(map(str, close))}" if close else "")
        line = ["*" if r.knee else "", trial, *_cells(r.values, r.stderr, names)]
        if has_heldout:
            line += _cells(r.heldout, r.heldout_stderr, names)
        line.append(_top_coefficients(r.coefficients))
        table.append(line)
    table.append([""] * len(head))
    table.append(["", "baseline", *([""] * (len(head) - 2))])
    for b in report.baselines:
        where = f"trial {b.trial}" if b.trial is not None else "scored here"
        line = ["", f"{b.label} ({where})", *_cells(b.values, b.stderr, names)]
        if has_heldout:
            line += _cells(b.heldout, b.heldout_stderr, names)
        line.append(_baseline_status(b))
        table.append(line)
    return table


def _notes(report: Report) -> list[str]:
    """The lines under the table: example counts, marks, trials stopped early, the test split, the
    hypervolume."""
    lines = []
    counts = _examples_text(report.examples)
    if counts:
        lines.append(f"value ± standard error; {counts}")
    signalled = [o.name for o in report.objectives if o.search_tasks]
    if signalled:
        lines.append(
            f"search values of {', '.join(signalled)}: the objective's search_tasks (what the "
            "sampler and the strategies saw); held-out and test values: its tasks"
        )
    if any(r.indistinct_from for r in report.front):
        lines.append(
            "≈N: the data cannot tell this point from trial N (every objective within 2 paired "
            "standard errors on the same examples)"
        )
    stopped = [t for t in report.trials if t.stopped_by is not None]
    if stopped:
        lines.append(
            f"{len(stopped)} of {len(report.trials)} completed trials were stopped early (a front "
            "member beat them with confidence); they are never on the front"
        )
    n_dom = sum(bool(b.dominated_by) for b in report.baselines)
    lines.append(f"the front dominates {n_dom} of {len(report.baselines)} baselines")
    if report.knee_split == "heldout" and report.search_knee_trial != report.knee_trial:
        lines.append(f"knee on the search scores alone: trial {report.search_knee_trial}")
    if report.heldout_note:
        lines.append(f"held-out re-scores: {report.heldout_note}")
    if report.test:
        lines += split_section(report.test, report.names)
    elif report.test_note:
        lines.append(f"test split: {report.test_note}")
    hv = report.hypervolume
    if hv:
        ref = ", ".join(f"{k}={_num(v)}" for k, v in hv.reference.items())
        lines.append(f"hypervolume of the front: {hv.value:.4g} (reference point: {ref})")
    return lines


def _aligned(table: Sequence[Sequence[str]]) -> list[str]:
    """The rows of ``table`` as lines, each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]


def split_section(test: Verdict, names: Sequence[str]) -> list[str]:
    """Lines of the "test split: chosen merge vs inputs" section: each row's objectives and
    mean, and the chosen merge's lead over it."""
    chosen = test.chosen
    examples = ", ".join(f"{k} {v}" for k, v in chosen.examples.items())
    head = ["", *names, "mean", "chosen − it (mean)"]
    table = [head]
    table.append(
        [
            f"chosen: trial {chosen.trial}",
            *(_num(chosen.objectives[n]) for n in names),
            _num(chosen.mean),
            "",
        ]
    )
    for b in test.baselines:
        table.append(
            [
                b.label,
                *(_num(b.objectives[n]) for n in names),
                _num(b.mean),
                lead_text(b, "mean"),
            ]
        )
    title = "test split: chosen merge vs the uniform merge and the inputs"
    if examples:
        title += f" (examples per task: {examples})"
    return [title, *_aligned(table), verdict_text(test)]


def _baseline_status(b: Baseline) -> str:
    """How a baseline compares with the front, in words."""
    if b.dominated_by:
        more = f" (+{len(b.dominated_by) - 1})" if len(b.dominated_by) > 1 else ""
        return f"dominated by trial {b.dominated_by[0]}{more}"
    if b.on_front:
        return "on the front"
    if b.dominates:
        why = " (not a trial of the study)" if b.trial is None else ""
        return f"dominates front trial(s) {', '.join(map(str, b.dominates))}{why}"
    return "not dominated by the front"


def counts_text(counts: Mapping[str, int]) -> str:
    """``{"complete": 5, "fail": 1}`` -> ``"5 complete, 1 fail"``."""
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"


def _num(x: float) -> str:
    return f"{x:.4f}"


def _cells(
    values: Mapping[str, float] | None,
    errors: Mapping[str, float | None] | None,
    names: Sequence[str],
) -> list[str]:
    """``value ± SE`` per objective (the value alone where no SE was recorded; ``-``: none)."""
    if not values:
        return ["-" for _ in names]
    out = []
    for n in names:
        se = (errors or {}).get(n)
        out.append(_num(values[n]) + (f" ± {se:.4f}" if se is not None else ""))
    return out


def _examples_text(examples: Mapping[str, Mapping[str, int]]) -> str:
    """``examples per trial: demo_code/exact_match 200, ...`` (and the held-out tasks')."""
    parts = []
    for split, label in (("search", "examples per trial"), ("heldout", "held-out examples")):
        counts = examples.get(split) or {}
        if counts:
            parts.append(f"{label}: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    return "; ".join(parts)


def _top_coefficients(coefficients: Mapping[str, Sequence[float]] | None) -> str:
    if not coefficients:
        return "-"
    mean = {k: sum(v) / len(v) for k, v in coefficients.items() if v}
    top = [kv for kv in sorted(mean.items(), key=lambda kv: -abs(kv[1])) if abs(kv[1]) >= 0.005]
    top = top[:TOP_COEFFICIENTS]
    return ", ".join(f"{k} {v:.2f}" for k, v in top)


def lead_text(baseline: VerdictEntry, key: str) -> str:
    """The chosen merge's lead over a baseline on ``key`` (an objective or ``"mean"``), with its
    paired standard error when the per-example values give one: ``+0.0310 ± 0.0087``."""
    diff = (baseline.diff or {})[key]
    se = (baseline.diff_se or {}).get(key)
    return f"{diff:+.4f}" + (f" ± {se:.4f}" if se is not None else "")


def verdict_text(test: Verdict) -> str:
    """One line: the chosen merge's test-split lead on the mean over the uniform merge and over
    the best input, each ``± paired SE (z SE)`` (:func:`~search.report.scores.verdict`)."""
    from search.report.scores import verdict

    v = verdict(test)

    def part(what: str, lead: Lead | None) -> str:
        if lead is None:
            return ""
        se = f" ± {lead.se:.4f}" if lead.se is not None else ""
        z = f" ({lead.z:+.1f} SE)" if lead.z is not None else ""
        return f"{what}: {lead.diff:+.4f}{se}{z}"

    best = v.best_input
    parts = [
        part("over the uniform merge", v.uniform),
        part(f"over the best input ({best.label})", best) if best else "",
    ]
    return "verdict, chosen − baseline on the test mean: " + "; ".join(p for p in parts if p)
