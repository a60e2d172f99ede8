"""Renderings of a Pareto report: the text table, and plots of the front and the hypervolume.

Both renderers read the report dict built by :func:`search.report.view.build_report` (the same
data ``merge-search pareto --json`` prints), so the picture and the table never disagree:

- two or more objectives: left panel, every scored trial (grey), the front (red line), the
  knee (star), the input checkpoints (triangles, labelled) and the uniform merge (black
  square) on the first two objectives (a projection when there are more); right panel, the
  hypervolume of the front after each trial;
- one objective: the value of each trial by trial number with the best-so-far line, and the
  inputs and the uniform merge as labelled horizontal lines.

``FILE.png`` is drawn with matplotlib (no pyplot, so no global figure state), ``FILE.html``
with plotly (plotly.js embedded: the page opens offline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search.errors import UserError

PLOT_SUFFIXES = (".png", ".html")
TOP_COEFFICIENTS = 3  # coefficients shown per front row in the table


def check_plot_path(path: str | Path) -> Path:
    """The plot path if its suffix is supported, else a one-line ``UserError``."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"--plot {path}: expected a file name ending in .png or .html")
    if path.exists() and path.is_dir():
        raise UserError(f"--plot {path}: is a folder; expected a file name ending in .png or .html")
    return path


def write_plot(report: Mapping[str, Any], path: str | Path) -> Path:
    """Draw the report into ``path`` (.png or .html; parent folders are created)."""
    path = check_plot_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        matplotlib_figure(report).savefig(path, dpi=110)
    else:
        plotly_figure(report).write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def _series(report: Mapping[str, Any]) -> dict[str, Any]:
    """Plain lists for both renderers: names, every trial, the front, baselines, history."""
    names = [o["name"] for o in report["objectives"]]
    trials = [t for t in report["trials"] if t["feasible"]]
    infeasible = [t for t in report["trials"] if not t["feasible"]]
    front = sorted(report["front"], key=lambda t: [t["values"][n] for n in names])
    hv = report.get("hypervolume") or {}
    return {
        "names": names,
        "directions": [o["direction"] for o in report["objectives"]],
        "trials": trials,
        "infeasible": infeasible,
        "front": front,
        "knee": next((t for t in front if t.get("knee")), None),
        "baselines": report.get("baselines", []),
        "history": hv.get("history", []),
        "title": f"{report['study']}: {len(report['trials'])} trials, front of {len(front)}",
    }


def matplotlib_figure(report: Mapping[str, Any]) -> Any:
    """A ``matplotlib.figure.Figure`` of the report (see the module docstring)."""
    from matplotlib.figure import Figure

    s = _series(report)
    names = s["names"]
    if len(names) == 1:
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        _mpl_single(ax, s)
    else:
        fig = Figure(figsize=(12, 5), layout="constrained")
        ax, ax_hv = fig.subplots(1, 2)
        _mpl_front(ax, s)
        ax_hv.step(
            [h["trial"] for h in s["history"]],
            [h["hypervolume"] for h in s["history"]],
            where="post",
            color="tab:blue",
        )
        ax_hv.set_xlabel("trial")
        ax_hv.set_ylabel("hypervolume of the front")
        ax_hv.set_title("hypervolume history")
        ax_hv.grid(alpha=0.3)
    fig.suptitle(s["title"])
    return fig


def _mpl_front(ax: Any, s: Mapping[str, Any]) -> None:
    x, y = s["names"][0], s["names"][1]
    ax.scatter(
        [t["values"][x] for t in s["trials"]],
        [t["values"][y] for t in s["trials"]],
        s=14,
        color="0.7",
        label="trials",
    )
    if s["infeasible"]:
        ax.scatter(
            [t["values"][x] for t in s["infeasible"]],
            [t["values"][y] for t in s["infeasible"]],
            s=14,
            marker="x",
            color="0.5",
            label="infeasible",
        )
    ax.plot(
        [t["values"][x] for t in s["front"]],
        [t["values"][y] for t in s["front"]],
        "o-",
        color="tab:red",
        label="Pareto front",
    )
    for t in s["front"]:
        ax.annotate(
            str(t["trial"]),
            (t["values"][x], t["values"][y]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
            color="tab:red",
        )
    if s["knee"]:
        ax.scatter(
            [s["knee"]["values"][x]],
            [s["knee"]["values"][y]],
            marker="*",
            s=260,
            color="gold",
            edgecolors="black",
            zorder=5,
            label=f"knee (trial {s['knee']['trial']})",
        )
    for b in s["baselines"]:
        uniform = b["kind"] == "uniform"
        ax.scatter(
            [b["values"][x]],
            [b["values"][y]],
            marker="s" if uniform else "^",
            s=60,
            color="black" if uniform else "tab:green",
            zorder=4,
        )
        ax.annotate(
            b["label"],
            (b["values"][x], b["values"][y]),
            fontsize=8,
            xytext=(4, -10),
            textcoords="offset points",
        )
    ax.scatter([], [], marker="^", color="tab:green", label="input checkpoints")
    ax.scatter([], [], marker="s", color="black", label="uniform merge")
    ax.set_xlabel(_axis_label(s, 0))
    ax.set_ylabel(_axis_label(s, 1))
    ax.set_title("front" if len(s["names"]) == 2 else "front (first two objectives)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _mpl_single(ax: Any, s: Mapping[str, Any]) -> None:
    name = s["names"][0]
    trials = sorted(s["trials"], key=lambda t: t["trial"])
    ax.scatter(
        [t["trial"] for t in trials],
        [t["values"][name] for t in trials],
        s=14,
        color="0.6",
        label="trials",
    )
    best = _best_so_far(trials, name, s)
    ax.step([t["trial"] for t in trials], best, where="post", color="tab:red", label="best so far")
    for b in s["baselines"]:
        ax.axhline(
            b["values"][name],
            ls="--",
            lw=1,
            color="black" if b["kind"] == "uniform" else "tab:green",
        )
        ax.annotate(
            b["label"],
            (0, b["values"][name]),
            fontsize=8,
            xytext=(2, 2),
            textcoords="offset points",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(_axis_label(s, 0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plotly_figure(report: Mapping[str, Any]) -> Any:
    """A ``plotly.graph_objects.Figure`` of the report (see the module docstring)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = _series(report)
    names = s["names"]
    if len(names) == 1:
        fig = go.Figure()
        name = names[0]
        trials = sorted(s["trials"], key=lambda t: t["trial"])
        fig.add_scatter(
            x=[t["trial"] for t in trials],
            y=[t["values"][name] for t in trials],
            mode="markers",
            name="trials",
            marker={"color": "grey"},
        )
        fig.add_scatter(
            x=[t["trial"] for t in trials],
            y=_best_so_far(trials, name, s),
            mode="lines",
            line_shape="hv",
            name="best so far",
            line={"color": "red"},
        )
        for b in s["baselines"]:
            fig.add_hline(y=b["values"][name], line_dash="dash", annotation_text=b["label"])
        fig.update_xaxes(title_text="trial")
        fig.update_yaxes(title_text=_axis_label(s, 0))
    else:
        x, y = names[0], names[1]
        fig = make_subplots(
            rows=1,
            cols=2,
            subplot_titles=(
                "front" if len(names) == 2 else "front (first two objectives)",
                "hypervolume history",
            ),
        )
        fig.add_scatter(
            x=[t["values"][x] for t in s["trials"]],
            y=[t["values"][y] for t in s["trials"]],
            mode="markers",
            name="trials",
            marker={"color": "lightgrey"},
            text=[f"trial {t['trial']}" for t in s["trials"]],
            row=1,
            col=1,
        )
        fig.add_scatter(
            x=[t["values"][x] for t in s["front"]],
            y=[t["values"][y] for t in s["front"]],
            mode="lines+markers+text",
            name="Pareto front",
            line={"color": "red"},
            text=[str(t["trial"]) for t in s["front"]],
            textposition="top right",
            row=1,
            col=1,
        )
        if s["knee"]:
            fig.add_scatter(
                x=[s["knee"]["values"][x]],
                y=[s["knee"]["values"][y]],
                mode="markers",
                name=f"knee (trial {s['knee']['trial']})",
                marker={
                    "symbol": "star",
                    "size": 16,
                    "color": "gold",
                    "line": {"color": "black", "width": 1},
                },
                row=1,
                col=1,
            )
        for kind, symbol, color, label in (
            ("single", "triangle-up", "green", "input checkpoints"),
            ("uniform", "square", "black", "uniform merge"),
        ):
            group = [b for b in s["baselines"] if b["kind"] == kind]
            if group:
                fig.add_scatter(
                    x=[b["values"][x] for b in group],
                    y=[b["values"][y] for b in group],
                    mode="markers+text",
                    name=label,
                    text=[b["label"] for b in group],
                    textposition="bottom right",
                    marker={"symbol": symbol, "size": 11, "color": color},
                    row=1,
                    col=1,
                )
        fig.add_scatter(
            x=[h["trial"] for h in s["history"]],
            y=[h["hypervolume"] for h in s["history"]],
            mode="lines",
            line_shape="hv",
            name="hypervolume",
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text=_axis_label(s, 0), row=1, col=1)
        fig.update_yaxes(title_text=_axis_label(s, 1), row=1, col=1)
        fig.update_xaxes(title_text="trial", row=1, col=2)
        fig.update_yaxes(title_text="hypervolume", row=1, col=2)
    fig.update_layout(title_text=s["title"], template="plotly_white")
    return fig


def hypervolume_figure(report: Mapping[str, Any]) -> Any:
    """A small plotly figure of the hypervolume history alone (saved into optuna-dashboard)."""
    import plotly.graph_objects as go

    s = _series(report)
    fig = go.Figure()
    fig.add_scatter(
        x=[h["trial"] for h in s["history"]],
        y=[h["hypervolume"] for h in s["history"]],
        mode="lines+markers",
        line_shape="hv",
        name="hypervolume",
    )
    fig.update_layout(
        title_text="Hypervolume of the Pareto front (merge-search pareto)",
        xaxis_title="trial",
        yaxis_title="hypervolume",
        template="plotly_white",
    )
    return fig


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table."""
    names = [o["name"] for o in report["objectives"]]
    arrows = ", ".join(
        f"{o['name']} {'↑' if o['direction'] == 'maximize' else '↓'}" for o in report["objectives"]
    )
    has_heldout = any(r["heldout"] for r in report["front"])
    head = ["", "trial", *names]
    if has_heldout:
        head += [f"held-out {n}" for n in names]
    head.append("largest coefficients")
    table = [head]
    for r in report["front"]:
        close = r.get("indistinct_from") or []
        trial = str(r["trial"]) + (f" ≈{','.join(map(str, close))}" if close else "")
        line = ["*" if r["knee"] else "", trial, *_cells(r, "values", "stderr", names)]
        if has_heldout:
            line += _cells(r, "heldout", "heldout_stderr", names)
        line.append(_top_coefficients(r["coefficients"]))
        table.append(line)
    table.append([""] * len(head))
    table.append(["", "baseline", *([""] * (len(head) - 2))])
    for b in report["baselines"]:
        where = f"trial {b['trial']}" if b["trial"] is not None else "scored here"
        line = ["", f"{b['label']} ({where})", *_cells(b, "values", "stderr", names)]
        if has_heldout:
            line += _cells(b, "heldout", "heldout_stderr", names)
        line.append(_baseline_status(b))
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    on_heldout = report.get("knee_split") == "heldout"
    lines = [
        f"study {report['study']} ({report['storage']}): {counts_text(report['trial_counts'])}; "
        f"objectives: {arrows}",
        f"Pareto front: {len(report['front'])} trial(s); * = knee (the largest smallest lead over "
        f"the uniform merge across the objectives"
        + (", judged on the held-out re-scores: what export --knee picks)" if on_heldout else ")"),
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    counts = _examples_text(report.get("examples") or {})
    if counts:
        lines.append(f"value ± standard error; {counts}")
    if any(r.get("indistinct_from") for r in report["front"]):
        lines.append(
            "≈N: the data cannot tell this point from trial N (every objective within 2 paired "
            "standard errors on the same examples)"
        )
    stopped = [t for t in report.get("trials", []) if t.get("stopped_by") is not None]
    if stopped:
        lines.append(
            f"staged scoring stopped {len(stopped)} of {len(report['trials'])} completed trials "
            "early (a front member beat them with confidence); they are never on the front"
        )
    n_dom = sum(bool(b["dominated_by"]) for b in report["baselines"])
    lines.append(f"the front dominates {n_dom} of {len(report['baselines'])} baselines")
    if on_heldout and report.get("search_knee_trial") != report["knee_trial"]:
        lines.append(f"knee on the search scores alone: trial {report['search_knee_trial']}")
    if report["heldout_note"]:
        lines.append(f"held-out re-scores: {report['heldout_note']}")
    if report.get("test"):
        lines += split_section(report["test"], names)
    elif report.get("test_note"):
        lines.append(f"test split: {report['test_note']}")
    hv = report["hypervolume"]
    if hv:
        ref = ", ".join(f"{k}={_num(v)}" for k, v in hv["reference"].items())
        lines.append(f"hypervolume of the front: {hv['value']:.4g} (reference point: {ref})")
    return "\n".join(lines)


def split_section(test: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """Lines of the "test split: chosen merge vs inputs" section: each row's objectives and
    mean, and the chosen merge's lead over it."""
    chosen = test["chosen"]
    examples = ", ".join(f"{k} {v}" for k, v in chosen["examples"].items())
    head = ["", *names, "mean", "chosen − it (mean)"]
    table = [head]
    table.append(
        [
            f"chosen: trial {chosen['trial']}",
            *(_num(chosen["objectives"][n]) for n in names),
            _num(chosen["mean"]),
            "",
        ]
    )
    for b in test["baselines"]:
        table.append(
            [
                b["label"],
                *(_num(b["objectives"][n]) for n in names),
                _num(b["mean"]),
                lead_text(b, "mean"),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    title = "test split: chosen merge vs the uniform merge and the inputs"
    if examples:
        title += f" (examples per task: {examples})"
    return [
        title,
        *(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in table
        ),
        verdict_text(test),
    ]


def _baseline_status(b: Mapping[str, Any]) -> str:
    """How a baseline compares with the front, in words."""
    if b["dominated_by"]:
        more = f" (+{len(b['dominated_by']) - 1})" if len(b["dominated_by"]) > 1 else ""
        return f"dominated by trial {b['dominated_by'][0]}{more}"
    if b["on_front"]:
        return "on the front"
    if b["dominates"]:
        why = " (not a trial of the study)" if b["trial"] is None else ""
        return f"dominates front trial(s) {', '.join(map(str, b['dominates']))}{why}"
    return "not dominated by the front"


def counts_text(counts: Mapping[str, int]) -> str:
    """``{"complete": 5, "fail": 1}`` -> ``"5 complete, 1 fail"``."""
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"


def _num(x: float) -> str:
    return f"{x:.4f}"


def _cells(row: Mapping[str, Any], values: str, stderr: str, names: Sequence[str]) -> list[str]:
    """``value ± SE`` per objective (the value alone where no SE was recorded; ``-``: none)."""
    if not row.get(values):
        return ["-" for _ in names]
    errors = row.get(stderr) or {}
    out = []
    for n in names:
        se = errors.get(n)
        out.append(_num(row[values][n]) + (f" ± {se:.4f}" if se is not None else ""))
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


def _axis_label(s: Mapping[str, Any], i: int) -> str:
    name = s["names"][i]
    return f"{name} ({'higher' if _maximize(s, i) else 'lower'} is better)"


def _maximize(s: Mapping[str, Any], i: int) -> bool:
    return s["directions"][i] == "maximize"


def _best_so_far(trials: list[Mapping[str, Any]], name: str, s: Mapping[str, Any]) -> list[float]:
    pick = max if _maximize(s, 0) else min
    out: list[float] = []
    for t in trials:
        v = t["values"][name]
        out.append(v if not out else pick(out[-1], v))
    return out


def lead_text(baseline: Mapping[str, Any], key: str) -> str:
    """The chosen merge's lead over a baseline on ``key`` (an objective or ``"mean"``), with its
    paired standard error when the per-example values give one: ``+0.0310 ± 0.0087``."""
    diff = baseline["diff"][key]
    se = (baseline.get("diff_se") or {}).get(key)
    return f"{diff:+.4f}" + (f" ± {se:.4f}" if se is not None else "")


def verdict_text(test: Mapping[str, Any]) -> str:
    """One line: the chosen merge's test-split lead on the mean over the uniform merge and over
    the best input, each ``± paired SE (z SE)``
    (:func:`~search.report.scores.test_verdict`)."""
    from search.report.scores import test_verdict

    v = test_verdict(test)

    def part(what: str, lead: Mapping[str, Any] | None) -> str:
        if lead is None:
            return ""
        se = f" ± {lead['se']:.4f}" if lead["se"] is not None else ""
        z = f" ({lead['z']:+.1f} SE)" if lead["z"] is not None else ""
        return f"{what}: {lead['diff']:+.4f}{se}{z}"

    parts = [
        part("over the uniform merge", v["uniform"]),
        part(f"over the best input ({v['best_input']['label']})", v["best_input"])
        if v["best_input"]
        else "",
    ]
    return "verdict, chosen − baseline on the test mean: " + "; ".join(p for p in parts if p)
