"""Plots of a Pareto report: the front and the hypervolume (the text table: :mod:`.table`).

Both renderers read the :class:`~search.report.pareto_report.Report` that
:func:`~search.report.pareto_report.build_report` builds (the same data ``merge-search pareto
--json`` prints), so the picture and the table never disagree:

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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import UserError

if TYPE_CHECKING:
    from search.report.pareto_report import FrontRow, HypervolumePoint, Report, TrialRow
    from search.report.scores import Baseline

PLOT_SUFFIXES = (".png", ".html")


def check_plot_path(path: str | Path) -> Path:
    """The plot path if its suffix is supported, else a one-line ``UserError``."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"--plot {path}: expected a file name ending in .png or .html")
    if path.exists() and path.is_dir():
        raise UserError(f"--plot {path}: is a folder; expected a file name ending in .png or .html")
    return path


def write_plot(report: Report, path: str | Path) -> Path:
    """Draw the report into ``path`` (.png or .html; parent folders are created)."""
    path = check_plot_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        matplotlib_figure(report).savefig(path, dpi=110)
    else:
        plotly_figure(report).write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


@dataclass(frozen=True)
class Series:
    """What both renderers draw, gathered once from the report."""

    names: list[str]
    directions: list[str]
    trials: list[TrialRow]  # feasible
    infeasible: list[TrialRow]
    front: list[FrontRow]  # sorted along the first objectives
    knee: FrontRow | None
    baselines: list[Baseline]
    history: list[HypervolumePoint]
    title: str


def _series(report: Report) -> Series:
    names = report.names
    front = sorted(report.front, key=lambda t: [t.values[n] for n in names])
    return Series(
        names=names,
        directions=[o.direction for o in report.objectives],
        trials=[t for t in report.trials if t.feasible],
        infeasible=[t for t in report.trials if not t.feasible],
        front=front,
        knee=next((t for t in front if t.knee), None),
        baselines=report.baselines,
        history=report.hypervolume.history if report.hypervolume else [],
        title=f"{report.study}: {len(report.trials)} trials, front of {len(front)}",
    )


def matplotlib_figure(report: Report) -> Any:
    """A ``matplotlib.figure.Figure`` of the report (see the module docstring)."""
    from matplotlib.figure import Figure

    s = _series(report)
    names = s.names
    if len(names) == 1:
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        _mpl_single(ax, s)
    else:
        fig = Figure(figsize=(12, 5), layout="constrained")
        ax, ax_hv = fig.subplots(1, 2)
        _mpl_front(ax, s)
        ax_hv.step(
            [h.trial for h in s.history],
            [h.hypervolume for h in s.history],
            where="post",
            color="tab:blue",
        )
        ax_hv.set_xlabel("trial")
        ax_hv.set_ylabel("hypervolume of the front")
        ax_hv.set_title("hypervolume history")
        ax_hv.grid(alpha=0.3)
    fig.suptitle(s.title)
    return fig


def _mpl_front(ax: Any, s: Series) -> None:
    x, y = s.names[0], s.names[1]
    ax.scatter(
        [t.values[x] for t in s.trials],
        [t.values[y] for t in s.trials],
        s=14,
        color="0.7",
        label="trials",
    )
    if s.infeasible:
        ax.scatter(
            [t.values[x] for t in s.infeasible],
            [t.values[y] for t in s.infeasible],
            s=14,
            marker="x",
            color="0.5",
            label="infeasible",
        )
    ax.plot(
        [t.values[x] for t in s.front],
        [t.values[y] for t in s.front],
        "o-",
        color="tab:red",
        label="Pareto front",
    )
    for t in s.front:
        ax.annotate(
            str(t.trial),
            (t.values[x], t.values[y]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
            color="tab:red",
        )
    if s.knee:
        ax.scatter(
            [s.knee.values[x]],
            [s.knee.values[y]],
            marker="*",
            s=260,
            color="gold",
            edgecolors="black",
            zorder=5,
            label=f"knee (trial {s.knee.trial})",
        )
    _mpl_baselines(ax, s, x, y)
    ax.set_xlabel(_axis_label(s, 0))
    ax.set_ylabel(_axis_label(s, 1))
    ax.set_title("front" if len(s.names) == 2 else "front (first two objectives)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _mpl_baselines(ax: Any, s: Series, x: str, y: str) -> None:
    """The input checkpoints (triangles) and the uniform merge (a square), labelled."""
    for b in s.baselines:
        uniform = b.kind == "uniform"
        ax.scatter(
            [b.values[x]],
            [b.values[y]],
            marker="s" if uniform else "^",
            s=60,
            color="black" if uniform else "tab:green",
            zorder=4,
        )
        ax.annotate(
            b.label,
            (b.values[x], b.values[y]),
            fontsize=8,
            xytext=(4, -10),
            textcoords="offset points",
        )
    ax.scatter([], [], marker="^", color="tab:green", label="input checkpoints")
    ax.scatter([], [], marker="s", color="black", label="uniform merge")


def _mpl_single(ax: Any, s: Series) -> None:
    name = s.names[0]
    trials = sorted(s.trials, key=lambda t: t.trial)
    ax.scatter(
        [t.trial for t in trials],
        [t.values[name] for t in trials],
        s=14,
        color="0.6",
        label="trials",
    )
    best = _best_so_far(trials, name, s)
    ax.step([t.trial for t in trials], best, where="post", color="tab:red", label="best so far")
    for b in s.baselines:
        ax.axhline(
            b.values[name],
            ls="--",
            lw=1,
            color="black" if b.kind == "uniform" else "tab:green",
        )
        ax.annotate(
            b.label,
            (0, b.values[name]),
            fontsize=8,
            xytext=(2, 2),
            textcoords="offset points",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(_axis_label(s, 0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plotly_figure(report: Report) -> Any:
    """A ``plotly.graph_objects.Figure`` of the report (see the module docstring)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = _series(report)
    if len(s.names) == 1:
        fig = go.Figure()
        _plotly_single(fig, s)
    else:
        front_title = "front" if len(s.names) == 2 else "front (first two objectives)"
        fig = make_subplots(rows=1, cols=2, subplot_titles=(front_title, "hypervolume history"))
        _plotly_front(fig, s)
        fig.add_scatter(
            x=[h.trial for h in s.history],
            y=[h.hypervolume for h in s.history],
            mode="lines",
            line_shape="hv",
            name="hypervolume",
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text="trial", row=1, col=2)
        fig.update_yaxes(title_text="hypervolume", row=1, col=2)
    fig.update_layout(title_text=s.title, template="plotly_white")
    return fig


def _plotly_single(fig: Any, s: Series) -> None:
    """One objective: every trial's value by trial number, the best so far, the baselines."""
    name = s.names[0]
    trials = sorted(s.trials, key=lambda t: t.trial)
    numbers = [t.trial for t in trials]
    fig.add_scatter(
        x=numbers,
        y=[t.values[name] for t in trials],
        mode="markers",
        name="trials",
        marker={"color": "grey"},
    )
    fig.add_scatter(
        x=numbers,
        y=_best_so_far(trials, name, s),
        mode="lines",
        line_shape="hv",
        name="best so far",
        line={"color": "red"},
    )
    for b in s.baselines:
        fig.add_hline(y=b.values[name], line_dash="dash", annotation_text=b.label)
    fig.update_xaxes(title_text="trial")
    fig.update_yaxes(title_text=_axis_label(s, 0))


def _plotly_front(fig: Any, s: Series) -> None:
    """Several objectives, the left panel: trials, the front, the knee and the baselines on the
    first two objectives."""
    x, y = s.names[0], s.names[1]
    panel = {"row": 1, "col": 1}
    fig.add_scatter(
        x=[t.values[x] for t in s.trials],
        y=[t.values[y] for t in s.trials],
        mode="markers",
        name="trials",
        marker={"color": "lightgrey"},
        text=[f"trial {t.trial}" for t in s.trials],
        **panel,
    )
    fig.add_scatter(
        x=[t.values[x] for t in s.front],
        y=[t.values[y] for t in s.front],
        mode="lines+markers+text",
        name="Pareto front",
        line={"color": "red"},
        text=[str(t.trial) for t in s.front],
        textposition="top right",
        **panel,
    )
    if s.knee:
        star = {
            "symbol": "star",
            "size": 16,
            "color": "gold",
            "line": {"color": "black", "width": 1},
        }
        fig.add_scatter(
            x=[s.knee.values[x]],
            y=[s.knee.values[y]],
            mode="markers",
            name=f"knee (trial {s.knee.trial})",
            marker=star,
            **panel,
        )
    for kind, symbol, color, label in (
        ("single", "triangle-up", "green", "input checkpoints"),
        ("uniform", "square", "black", "uniform merge"),
    ):
        group = [b for b in s.baselines if b.kind == kind]
        if group:
            fig.add_scatter(
                x=[b.values[x] for b in group],
                y=[b.values[y] for b in group],
                mode="markers+text",
                name=label,
                text=[b.label for b in group],
                textposition="bottom right",
                marker={"symbol": symbol, "size": 11, "color": color},
                **panel,
            )
    fig.update_xaxes(title_text=_axis_label(s, 0), **panel)
    fig.update_yaxes(title_text=_axis_label(s, 1), **panel)


def hypervolume_figure(report: Report) -> Any:
    """A small plotly figure of the hypervolume history alone (saved into optuna-dashboard)."""
    import plotly.graph_objects as go

    s = _series(report)
    fig = go.Figure()
    fig.add_scatter(
        x=[h.trial for h in s.history],
        y=[h.hypervolume for h in s.history],
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


def _axis_label(s: Series, i: int) -> str:
    name = s.names[i]
    return f"{name} ({'higher' if _maximize(s, i) else 'lower'} is better)"


def _maximize(s: Series, i: int) -> bool:
    return s.directions[i] == "maximize"


def _best_so_far(trials: list[TrialRow], name: str, s: Series) -> list[float]:
    pick = max if _maximize(s, 0) else min
    out: list[float] = []
    for t in trials:
        v = t.values[name]
        out.append(v if not out else pick(out[-1], v))
    return out
