"""`merge-search pareto`: the report, its table and plots."""

from __future__ import annotations

import json

import optuna
import pytest

from search.cli import main
from search.report.pareto_report import build_report
from search.report.plots import matplotlib_figure, plotly_figure, write_plot
from search.report.scores import baseline_plans
from search.report.table import format_report
from search.report.view import view_of
from tests.search.report_fixtures import MAX2, make_config, make_trial


def test_report_of_the_handmade_study(handmade, tmp_path):
    def no_runtime(*args, **kwargs):
        raise AssertionError("every baseline is a seed trial: nothing should be scored")

    built = build_report(handmade, heldout=False, runtime_factory=no_runtime)
    report = built.to_json()
    assert [r["trial"] for r in report["front"]] == [0, 1, 2]  # best instruct first
    assert report["knee_trial"] == 1
    assert [r["knee"] for r in report["front"]] == [False, True, False]
    baselines = {b["label"]: b for b in report["baselines"]}
    assert list(baselines) == ["uniform", "a", "b"]
    assert baselines["uniform"]["trial"] == 3
    assert baselines["uniform"]["dominated_by"] == [1]
    assert baselines["a"]["dominated_by"] == [] and baselines["a"]["on_front"]
    assert not baselines["uniform"]["on_front"] and baselines["uniform"]["dominates"] == []
    hv = report["hypervolume"]
    assert hv["reference"] == {"instruct": 0.1, "code": 0.1}
    assert hv["value"] == pytest.approx(0.25)  # only (0.6, 0.6) encloses area: 0.5 x 0.5
    assert [h["hypervolume"] for h in hv["history"]] == pytest.approx([0.0, 0.25, 0.25, 0.25])
    assert [h["trial"] for h in hv["history"]] == [0, 1, 2, 3]
    assert json.loads(json.dumps(report)) == report  # JSON-able as --json prints it

    text = format_report(built)
    knee_line = next(line for line in text.splitlines() if line.startswith("*"))
    assert knee_line.split()[1] == "1"
    assert "uniform (trial 3)" in text and "dominated by trial 1" in text and "on the front" in text
    assert "the front dominates 1 of 3 baselines" in text

    # the plots hold the front's points, in both renderers
    front = [(0.1, 0.9), (0.6, 0.6), (0.9, 0.1)]
    traces = {t.name: t for t in plotly_figure(built).data}
    assert sorted(zip(traces["Pareto front"].x, traces["Pareto front"].y, strict=True)) == front
    knee = traces["knee (trial 1)"]
    assert list(zip(knee.x, knee.y, strict=True)) == [(0.6, 0.6)]
    axes = matplotlib_figure(built).axes[0]
    (line,) = [ln for ln in axes.get_lines() if ln.get_label() == "Pareto front"]
    assert sorted(zip(line.get_xdata(), line.get_ydata(), strict=True)) == front
    for name in ("front.png", "sub/front.html"):
        path = write_plot(built, tmp_path / name)
        assert path.is_file()
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (tmp_path / "sub/front.html").read_text()[:200000].lower()


def test_single_objective_report_and_plot(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.set_metric_names(["code"])
    for v, key in [(0.2, "a"), (0.7, "b"), (0.7, "c"), (0.5, "d")]:
        study.add_trial(make_trial([v], key, seed="uniform" if key == "a" else None))
    cfg = make_config(
        objectives=[{"name": "code", "tasks": [{"task": "demo_code"}]}], seed_trials=["uniform"]
    )
    view = view_of(cfg, study, "sqlite:///x.db")
    assert [r.number for r in view.front()] == [1, 2]  # both reach the best value

    def scored_here(cfg, split="search"):
        raise AssertionError("not reached: the singles are found in the study's cache")

    study.set_user_attr(
        "baseline_scores",
        {
            p.key: {"objectives": {"code": 0.1 * i}, "tasks": {}}
            for i, (_, _, p) in enumerate(baseline_plans(["a", "b"]))
        },
    )
    built = build_report(view, heldout=False, runtime_factory=scored_here)
    report = built.to_json()
    assert report["hypervolume"] is None
    labels = {b["label"]: b for b in report["baselines"]}
    assert labels["uniform"]["trial"] == 0
    assert labels["a"]["trial"] is None and labels["a"]["values"] == {"code": pytest.approx(0.1)}
    traces = {t.name: t for t in plotly_figure(built).data}
    assert list(traces["trials"].y) == [0.2, 0.7, 0.7, 0.5]  # every trial, by number
    for name in ("best.png", "best.html"):
        assert write_plot(built, tmp_path / name).is_file()


def test_pareto_json_after_launch(launched, capsys):
    from search.report.view import open_view

    assert main(["pareto", str(launched), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["study"] == "launched" and report["trial_counts"] == {"complete": 5}
    assert [o["direction"] for o in report["objectives"]] == ["maximize", "minimize"]
    values = {t["trial"]: (t["values"]["pick"], t["values"]["ppl"]) for t in report["trials"]}
    front = [r["trial"] for r in report["front"]]
    for n in front:  # nothing beats a front trial on both objectives
        assert not any(
            v[0] >= values[n][0] and v[1] <= values[n][1] and v != values[n]
            for v in values.values()
        )
    assert report["knee_trial"] in front
    assert sum(r["knee"] for r in report["front"]) == 1
    for r in report["front"]:
        assert 0.0 <= r["heldout"]["pick"] <= 1.0
        assert r["heldout"]["ppl"] == pytest.approx(
            r["values"]["ppl"]
        )  # perplexity has no held-out split
        assert set(r["coefficients"]) == {"ft_a", "ft_b", "ft_c"}
    baselines = {b["label"]: b for b in report["baselines"]}
    assert list(baselines) == ["uniform", "ft_a", "ft_b", "ft_c"]
    assert baselines["uniform"]["trial"] == 0  # the seed trial
    # held-out: the uniform merge (the knee's reference) is re-scored, the inputs are not (they
    # are compared on the test split)
    assert baselines["uniform"]["heldout"] is not None
    assert all(
        baselines[n]["trial"] is None and baselines[n]["heldout"] is None
        for n in ("ft_a", "ft_b", "ft_c")
    )
    hv = report["hypervolume"]
    # the front's hypervolume is the history's last value (every distinct trial seen)
    assert hv["value"] == pytest.approx(hv["history"][-1]["hypervolume"])
    assert len(hv["history"]) == len([t for t in report["trials"] if t["duplicate_of"] is None])
    assert [h["trial"] for h in hv["history"]] == sorted(h["trial"] for h in hv["history"])

    # a second run is served from the study's caches: no model is built
    def no_runtime(*args, **kwargs):
        raise AssertionError("scores should come from the study's caches")

    again = build_report(open_view(launched), runtime_factory=no_runtime).to_json()
    assert json.loads(json.dumps(again)) == report
    study = open_view(launched).study
    assert set(study.user_attrs["heldout_scores"]["scores"]) >= {
        r["plan_key"] for r in report["front"]
    }
    assert len(study.user_attrs["baseline_scores"]) == 3
    # the hypervolume history is saved for optuna-dashboard (plot data: chunked study system attrs)
    storage = study._storage
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("launched"))
    prefix = "dashboard:plot_data:merge-search-hypervolume:"
    chunks = sorted((int(k[len(prefix) :]), v) for k, v in attrs.items() if k.startswith(prefix))
    figure = json.loads("".join(v for _, v in chunks))
    assert "hypervolume" in figure["layout"]["title"]["text"].lower()


def test_pareto_compares_the_chosen_knee_with_the_inputs_on_the_test_split(launched, capsys):
    assert main(["pareto", str(launched), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["knee_split"] == "heldout"
    knee = next(r for r in report["front"] if r["knee"])
    assert knee["trial"] == report["knee_trial"]
    heldout = {r["trial"]: (r["heldout"]["pick"], r["heldout"]["ppl"]) for r in report["front"]}
    k = heldout[knee["trial"]]  # the knee is on the front members' own held-out front
    assert not any(v[0] >= k[0] and v[1] <= k[1] and v != k for v in heldout.values())
    test = report["test"]
    assert test["chosen"]["trial"] == report["knee_trial"]
    assert test["chosen"]["examples"] == {"c2_pick_test": 6, "text.txt": 3}
    assert [b["label"] for b in test["baselines"]] == ["uniform", "ft_a", "ft_b", "ft_c"]
    for b in test["baselines"]:
        assert b["diff"]["pick"] == pytest.approx(
            test["chosen"]["objectives"]["pick"] - b["objectives"]["pick"]
        )
        assert b["diff"]["mean"] == pytest.approx(test["chosen"]["mean"] - b["mean"])
        # mean of the objectives with the minimized one (perplexity) negated
        assert b["mean"] == pytest.approx((b["objectives"]["pick"] - b["objectives"]["ppl"]) / 2)
    assert main(["pareto", str(launched)]) == 0
    text = capsys.readouterr().out
    assert (
        "test split: chosen merge vs the uniform merge and the inputs (examples per task: "
        "c2_pick_test 6, text.txt 3)" in text
    )
    assert f"chosen: trial {report['knee_trial']}" in text
    assert "judged on the held-out re-scores: what export --knee picks" in text


def test_pareto_table_and_plots_after_launch(launched, tmp_path, capsys):
    png, html = tmp_path / "front.png", tmp_path / "plots" / "front.html"
    assert main(["pareto", str(launched), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "* = knee" in text and "uniform (trial 0)" in text and "ft_a (scored here)" in text
    assert "held-out pick" in text and f"plot written to {png}" in text
    assert main(["pareto", str(launched), "--plot", str(html), "--no-heldout"]) == 0
    assert "held-out re-scores: skipped (--no-heldout)" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert html.stat().st_size > 10_000


def test_three_objective_report_and_plot(tmp_path):
    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    study.set_metric_names(["instruct", "code", "ppl"])
    for values, key in [
        ([0.5, 0.5, 2.0], "u"),
        ([1.0, 0.0, 3.0], "a"),
        ([0.0, 1.0, 3.0], "b"),
        ([0.4, 0.4, 2.5], "d"),
    ]:
        study.add_trial(make_trial(values, key, seed="uniform" if key == "u" else None))
    cfg = make_config(
        objectives=[
            {"name": n, "tasks": [{"task": "demo_code"}]} for n in ("instruct", "code", "ppl")
        ]
    )
    study.set_user_attr(
        "baseline_scores",
        {
            p.key: {"objectives": {"instruct": 0.1, "code": 0.1, "ppl": 9.0}, "tasks": {}}
            for _, _, p in baseline_plans(["a", "b"])
        },
    )
    built = build_report(view_of(cfg, study, "sqlite:///x.db"), heldout=False)
    report = built.to_json()
    assert [r["trial"] for r in report["front"]] == [1, 0, 2]  # (0.4, 0.4, 2.5) is dominated
    assert report["knee_trial"] == 0
    # reference (0, 0, 3): (0.5,0.5,2) adds 0.25, the extremes lie on the reference planes
    assert report["hypervolume"]["value"] == pytest.approx(0.5 * 0.5 * 1.0)
    for name in ("three.png", "three.html"):
        assert write_plot(built, tmp_path / name).is_file()


def _scored(values, key, instruct, code, **fields):
    from search.study.record import TrialRecord, encode_examples

    trial = make_trial(values, key)
    examples = {"demo_instruct/exact_match": instruct, "demo_code/exact_match": code}
    record = TrialRecord(number=0, examples=encode_examples(examples), **fields)
    trial.user_attrs.update(record.to_attrs())
    return trial


def test_front_points_the_data_cannot_tell_apart_are_marked_and_stopped_trials_left_out():
    from search.report.pareto_report import cannot_tell_apart

    n = 200
    base = [1.0] * 100 + [0.0] * 100
    study = optuna.create_study(directions=MAX2)
    for trial in [
        _scored([0.5, 0.5], "ka", base, base),
        # one example apart from ka on each skill: within noise
        _scored([0.505, 0.495], "kb", base[:100] + [1.0] + base[101:], base[:99] + [0.0] * 101),
        # far from both on both skills (but not dominated: better on instruct)
        _scored([0.9, 0.2], "kc", [1.0] * 180 + [0.0] * 20, [1.0] * 40 + [0.0] * 160),
        # best on both, but stopped by staged scoring: never on the front
        _scored(
            [1.0, 1.0],
            "kd",
            [1.0] * n,
            [1.0] * n,
            strategies={"staged": {"rung": 1, "rungs": 2, "stopped_by": 0}},
        ),
    ]:
        study.add_trial(trial)
    view = view_of(make_config(), study, "sqlite:///unused.db")
    front = view.front()
    assert [r.number for r in front] == [0, 1, 2]
    close = cannot_tell_apart(view, front)
    assert close == {0: [1], 1: [0]}
