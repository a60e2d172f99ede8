"""`merge-search pareto / export / dashboard` on real Optuna studies.

Two layers: a hand-built study (real Optuna trials with chosen values, no model) checks the
choices exactly; a study launched for real on the tiny pool (real merges, real lm-eval) checks
the commands end to end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main
from search.errors import UserError
from search.plan import MergePlan
from search.report import baseline_plans, build_report, pick_row, view_of
from search.plots import format_report, write_plot

MAX2 = [optuna.study.StudyDirection.MAXIMIZE] * 2


# ------------------------------------------------------------------ a hand-built study, no model


def _config(**extra):
    from search.config import StudyConfig

    data = {
        "name": "handmade",
        "storage": "sqlite:///unused.db",
        "checkpoints": ["pool/a", "pool/b"],
        "objectives": [
            {"name": "instruct", "tasks": [{"task": "demo_instruct"}]},
            {"name": "code", "tasks": [{"task": "demo_code"}]},
        ],
        **extra,
    }
    return StudyConfig.model_validate(data)


def _trial(values, key, seed=None, constraints=None, state=optuna.trial.TrialState.COMPLETE):
    plan = MergePlan.create("linear", [0.5, 0.5], {"normalize": True})
    attrs = {"plan": plan.to_dict(), "plan_key": key, "coefficients": {"a": [0.5], "b": [0.5]}}
    if seed:
        attrs["seed_trial"] = seed
    system = {"constraints": constraints} if constraints is not None else {}
    return optuna.trial.create_trial(
        state=state, values=values if state == optuna.trial.TrialState.COMPLETE else None,
        user_attrs=attrs, system_attrs=system,
    )


@pytest.fixture()
def handmade():
    """t0..t5 completed (t4 infeasible, t5 a duplicate of t1's plan), t6 failed."""
    study = optuna.create_study(directions=MAX2)
    study.set_metric_names(["instruct", "code"])
    study.set_user_attr("fingerprint", {"checkpoints": [{"name": "a"}, {"name": "b"}], "base": None})
    for trial in [
        _trial([0.9, 0.1], "ka", seed="single:a"),
        _trial([0.6, 0.6], "kb"),
        _trial([0.1, 0.9], "kc", seed="single:b"),
        _trial([0.4, 0.4], "kd", seed="uniform"),
        _trial([1.0, 1.0], "ke", constraints=[0.5]),
        _trial([0.6, 0.6], "kb"),
        _trial(None, "kf", state=optuna.trial.TrialState.FAIL),
    ]:
        study.add_trial(trial)
    return view_of(_config(), study, "sqlite:///unused.db")


def test_front_skips_infeasible_and_duplicate_trials(handmade):
    assert [r.number for r in handmade.front()] == [0, 1, 2]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"knee": True}, 1),
        ({"best": "code"}, 2),
        ({"best": "instruct"}, 0),  # trial 4 scores higher but is infeasible
        ({"prefer": "instruct=1"}, 0),
        ({"prefer": "instruct=0.2,code=0.8"}, 2),  # 0.2, 0.625, 0.8 normalized
        ({"prefer": "instruct=0.5,code=0.5"}, 1),
        ({"trial": 4}, 4),  # asking by number may pick an infeasible trial
    ],
)
def test_pick_row(handmade, choice, expected):
    row, how = pick_row(handmade, **choice)
    assert row.number == expected
    assert how


@pytest.mark.parametrize(
    ("choice", "words"),
    [
        ({"trial": 6}, "completed trials: 0-5"),
        ({"trial": 99}, "completed trials: 0-5"),
        ({"best": "math"}, "objectives: instruct, code"),
        ({"prefer": "math=1"}, "instruct, code"),
        ({"prefer": "instruct=-1"}, ">= 0"),
    ],
)
def test_pick_row_errors_name_what_exists(handmade, choice, words):
    with pytest.raises(UserError, match=words):
        pick_row(handmade, **choice)


def test_pick_row_without_completed_or_feasible_trials():
    study = optuna.create_study(directions=MAX2)
    study.set_metric_names(["instruct", "code"])
    with pytest.raises(UserError, match="no completed trials"):
        pick_row(view_of(_config(), study, "sqlite:///x.db"), knee=True)
    study.add_trial(_trial([0.5, 0.5], "k", constraints=[1.0]))
    view = view_of(_config(), study, "sqlite:///x.db")
    with pytest.raises(UserError, match="meets the constraints"):
        pick_row(view, knee=True)
    assert pick_row(view, trial=0)[0].number == 0


def test_report_of_the_handmade_study(handmade, tmp_path):
    def no_runtime(*args, **kwargs):
        raise AssertionError("every baseline is a seed trial: nothing should be scored")

    report = build_report(handmade, heldout=False, runtime_factory=no_runtime)
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

    text = format_report(report)
    knee_line = next(line for line in text.splitlines() if line.startswith("*"))
    assert knee_line.split()[1] == "1"
    assert "uniform (trial 3)" in text and "dominated by trial 1" in text and "on the front" in text
    assert "the front dominates 1 of 3 baselines" in text

    for name in ("front.png", "sub/front.html"):
        path = write_plot(report, tmp_path / name)
        assert path.stat().st_size > 1000
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (tmp_path / "sub/front.html").read_text()[:200000].lower()


def test_single_objective_report_and_plot(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.set_metric_names(["code"])
    for v, key in [(0.2, "a"), (0.7, "b"), (0.7, "c"), (0.5, "d")]:
        study.add_trial(_trial([v], key, seed="uniform" if key == "a" else None))
    cfg = _config(objectives=[{"name": "code", "tasks": [{"task": "demo_code"}]}],
                  seed_trials=["uniform"])
    view = view_of(cfg, study, "sqlite:///x.db")
    assert [r.number for r in view.front()] == [1, 2]  # both reach the best value

    def scored_here(cfg, heldout=False):
        raise AssertionError("not reached: the singles are found in the study's cache")

    study.set_user_attr("baseline_scores", {
        p.key: {"objectives": {"code": 0.1 * i}, "tasks": {}}
        for i, (_, _, p) in enumerate(baseline_plans(["a", "b"]))
    })
    report = build_report(view, heldout=False, runtime_factory=scored_here)
    assert report["hypervolume"] is None
    labels = {b["label"]: b for b in report["baselines"]}
    assert labels["uniform"]["trial"] == 0
    assert labels["a"]["trial"] is None and labels["a"]["values"] == {"code": pytest.approx(0.1)}
    for name in ("best.png", "best.html"):
        assert write_plot(report, tmp_path / name).stat().st_size > 1000


# ------------------------------------------- a hand-built SQLite study over the tiny pool: export


def _write_config(folder: Path, name: str, zoo, **extra) -> Path:
    data = {
        "name": name,
        "storage": f"sqlite:///{folder / 'studies.db'}",
        "checkpoints": [str(p) for p in zoo.checkpoints],
        "base_model": str(zoo.base),
        "merge": {"method": "linear", "weights": {"low": 0.0, "high": 1.0, "normalize": True}},
        "objectives": [
            {"name": "instruct", "tasks": [{"task": "demo_instruct", "metric": "exact_match"}]},
            {"name": "code", "tasks": [{"task": "demo_code", "metric": "exact_match"}]},
        ],
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 4},
        "seed_trials": ["uniform"],
        "device": "cpu",
        "dtype": "float32",
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def exportable(tiny_zoo, tmp_path_factory):
    """A study created by the study service with four real plans and chosen scores."""
    from search.config import load_config
    from search.pool import CheckpointPool
    from search.space import SearchSpace
    from search.study import create_or_resume, open_storage

    folder = tmp_path_factory.mktemp("exportable")
    path = _write_config(folder, "exportable", tiny_zoo, seed_trials=[])
    cfg = load_config(path)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model)
    space = SearchSpace.build(cfg, pool.names)
    study, created = create_or_resume(cfg, open_storage(cfg, create=True), space, pool.fingerprint(), path)
    assert created
    for weights, values in [([1, 1, 1], [0.3, 0.3]), ([1, 0, 0], [0.8, 0.1]),
                            ([0, 1, 1], [0.2, 0.7]), ([2, 1, 0], [0.6, 0.5])]:
        plan = space.plan(dict(zip([r[0] for r in space.weight_params()], weights)))
        study.add_trial(optuna.trial.create_trial(values=values, user_attrs={
            "plan": plan.to_dict(), "plan_key": plan.key,
            "coefficients": {n: [w / sum(weights)] for n, w in zip(pool.names, weights)},
            "task_scores": {"demo_instruct/exact_match": values[0], "demo_code/exact_match": values[1]},
        }))
    return path, study


@pytest.mark.parametrize(
    ("flags", "trial", "how"),
    [
        (["--knee"], 3, "knee"),
        (["--trial", "0"], 0, "trial 0"),
        (["--best", "code"], 2, "best on code"),
        (["--prefer", "instruct=1"], 1, "preferred by instruct=1"),
    ],
)
def test_export_writes_a_loadable_model_with_scores_and_provenance(exportable, tmp_path, capsys, flags, trial, how):
    config, study = exportable
    out = tmp_path / "merged"
    assert main(["export", str(config), *flags, "--out", str(out)]) == 0
    assert f"exported trial {trial} ({how}" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert f"| trial | {trial} |" in card
    assert f"| chosen as | {how}" in card
    values = study.trials[trial].values
    assert f"| instruct | {values[0]} |" in card and f"| code | {values[1]} |" in card
    assert f"| plan key | `{study.trials[trial].user_attrs['plan_key']}` |" in card
    assert "| study | exportable |" in card and "header_sha256" in card
    if flags == ["--knee"]:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out)
        assert model.config.num_hidden_layers == 4


def test_export_refuses_an_existing_folder_unless_forced(exportable, tmp_path, capsys):
    config, _ = exportable
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert main(["export", str(config), "--knee", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("merge-search: error: --out") and "--force" in err and err.count("\n") == 1
    assert (out / "keep.txt").read_text() == "user data"
    assert main(["export", str(config), "--knee", "--out", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--trial", "7"], "--trial 7: no completed trial with that number in study 'exportable'; "
                           "completed trials: 0-3"),
        (["--best", "math"], "--best math: unknown objective; objectives: instruct, code"),
        (["--prefer", "math=1"], "expected OBJECTIVE=WEIGHT with OBJECTIVE one of instruct, code"),
    ],
)
def test_export_errors_are_one_line(exportable, tmp_path, capsys, flags, words):
    config, _ = exportable
    out = tmp_path / "never"
    assert main(["export", str(config), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not out.exists()


def test_export_and_pareto_of_a_study_without_trials(tiny_zoo, tmp_path, capsys):
    from search.config import load_config
    from search.study import open_storage

    config = _write_config(tmp_path, "empty", tiny_zoo)
    assert main(["pareto", str(config)]) == 2  # no storage yet: nothing is created
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "studies.db").exists()
    cfg = load_config(config)
    optuna.create_study(study_name="empty", storage=open_storage(cfg, create=True), directions=["maximize"] * 2)
    for command in (["pareto", str(config)], ["export", str(config), "--knee", "--out", str(tmp_path / "o")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "study 'empty'" in err and "no completed trials yet" in err and err.count("\n") == 1
    assert main(["pareto", str(config), "--plot", str(tmp_path / "front.svg")]) == 2
    assert "expected a file name ending in .png or .html" in capsys.readouterr().err
    assert not (tmp_path / "front.svg").exists()


# ------------------------------------------------ launch -> pareto -> export on the tiny pool


PICK = [("ab+c=", ["abc", "cab", "bca"], 0), ("1+2=", ["3", "4", "5"], 0), ("dog:", ["god", "odg", "dgo"], 0),
        ("x*y=", ["xy", "yx", "xx"], 1), ("red.", ["der", "erd", "red"], 2), ("9-4=", ["5", "6", "4"], 0)]
PICK_HELDOUT = [("sun!", ["nus", "uns", "sun"], 0), ("(a)", ["a", "b", "c"], 0), ("go,", ["og", "go", "oo"], 1),
                ("7/7=", ["1", "7", "0"], 0), ("b+a=", ["ab", "ba", "aa"], 1), ("cat.", ["tac", "act", "cta"], 0)]


def _task(folder: Path, name: str, items) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"q": q, "choices": c, "answer": a}) + "\n" for q, c, a in items))
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{q}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}],
    }))


@pytest.fixture(scope="module")
def launched(tiny_zoo, tmp_path_factory):
    """A study run by `merge-search launch`: accuracy on a choice task vs perplexity on a text."""
    folder = tmp_path_factory.mktemp("launched")
    tasks = folder / "tasks"
    tasks.mkdir()
    _task(tasks, "c2_pick", PICK)
    _task(tasks, "c2_pick_heldout", PICK_HELDOUT)
    (tasks / "text.txt").write_text("the cat sat on the mat.\nreverse: stone? enots\na=4;print(a)? 4\n")
    config = _write_config(
        folder, "launched", tiny_zoo,
        objectives=[
            {"name": "pick", "tasks": [{"task": "c2_pick", "metric": "acc"}]},
            {"name": "ppl", "direction": "minimize", "evaluator": "perplexity", "data": str(tasks / "text.txt")},
        ],
        tasks_path=str(tasks),
        eval={"batch_size": 8, "heldout": {"c2_pick": "c2_pick_heldout"}},
        budget={"n_trials": 5},
        seed_trials=["uniform"],  # the inputs alone are scored by `pareto` itself
    )
    assert main(["launch", str(config)]) == 0
    return config


def test_pareto_json_after_launch(launched, capsys):
    from search.report import open_view

    assert main(["pareto", str(launched), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["study"] == "launched" and report["trial_counts"] == {"complete": 5}
    assert [o["direction"] for o in report["objectives"]] == ["maximize", "minimize"]
    values = {t["trial"]: (t["values"]["pick"], t["values"]["ppl"]) for t in report["trials"]}
    front = [r["trial"] for r in report["front"]]
    for n in front:  # nothing beats a front trial on both objectives
        assert not any(v[0] >= values[n][0] and v[1] <= values[n][1] and v != values[n] for v in values.values())
    assert report["knee_trial"] in front
    assert sum(r["knee"] for r in report["front"]) == 1
    for r in report["front"]:
        assert 0.0 <= r["heldout"]["pick"] <= 1.0
        assert r["heldout"]["ppl"] == pytest.approx(r["values"]["ppl"])  # perplexity has no held-out split
        assert set(r["coefficients"]) == {"ft_a", "ft_b", "ft_c"}
    baselines = {b["label"]: b for b in report["baselines"]}
    assert list(baselines) == ["uniform", "ft_a", "ft_b", "ft_c"]
    assert baselines["uniform"]["trial"] == 0  # the seed trial
    assert all(baselines[n]["trial"] is None and baselines[n]["heldout"] for n in ("ft_a", "ft_b", "ft_c"))
    hv = report["hypervolume"]
    assert hv["value"] >= 0
    assert len(hv["history"]) == len([t for t in report["trials"] if t["duplicate_of"] is None])
    assert [h["trial"] for h in hv["history"]] == sorted(h["trial"] for h in hv["history"])

    # a second run is served from the study's caches: no model is built
    def no_runtime(*args, **kwargs):
        raise AssertionError("scores should come from the study's caches")

    again = build_report(open_view(launched), runtime_factory=no_runtime)
    assert json.loads(json.dumps(again)) == report
    study = open_view(launched).study
    assert set(study.user_attrs["heldout_scores"]["scores"]) >= {r["plan_key"] for r in report["front"]}
    assert len(study.user_attrs["baseline_scores"]) == 3
    # the hypervolume history is saved for optuna-dashboard (its plot data: chunked study system attrs)
    storage = study._storage
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("launched"))
    prefix = "dashboard:plot_data:merge-search-hypervolume:"
    chunks = sorted((int(k[len(prefix):]), v) for k, v in attrs.items() if k.startswith(prefix))
    figure = json.loads("".join(v for _, v in chunks))
    assert "hypervolume" in figure["layout"]["title"]["text"].lower()


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


def test_export_knee_after_launch(launched, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    assert main(["pareto", str(launched), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    out = tmp_path / "knee"
    assert main(["export", str(launched), "--knee", "--out", str(out)]) == 0
    assert f"exported trial {report['knee_trial']} (knee" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert f"| trial | {report['knee_trial']} |" in card and "## Held-out scores" in card
    assert "c2_pick_heldout/acc" in card
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4


# ------------------------------------------------------------------------------------ dashboard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("by", ["config", "url"])
def test_dashboard_serves_the_study_on_localhost(exportable, by):
    config, study = exportable
    target = str(config) if by == "config" else f"sqlite:///{config.parent / 'studies.db'}"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "dashboard", target, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        answer = None
        deadline = time.monotonic() + 60
        while answer is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                    answer = json.load(resp)
            except OSError:
                time.sleep(0.3)
        assert answer is not None, f"dashboard did not answer (exit code {proc.poll()})"
        assert [s["study_name"] for s in answer["study_summaries"]] == ["exportable"]
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"http://127.0.0.1:{port}/dashboard/" in out


def test_dashboard_refuses_a_missing_storage_and_a_busy_port(exportable, tmp_path, capsys):
    config, _ = exportable
    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    assert main(["dashboard", missing]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", str(config), "--port", str(port)]) == 2
    assert f"--port {port}: already in use" in capsys.readouterr().err


def test_three_objective_report_and_plot(tmp_path):
    study = optuna.create_study(directions=["maximize", "maximize", "minimize"])
    study.set_metric_names(["instruct", "code", "ppl"])
    for values, key in [([0.5, 0.5, 2.0], "u"), ([1.0, 0.0, 3.0], "a"), ([0.0, 1.0, 3.0], "b"),
                        ([0.4, 0.4, 2.5], "d")]:
        study.add_trial(_trial(values, key, seed="uniform" if key == "u" else None))
    cfg = _config(objectives=[{"name": n, "tasks": [{"task": "demo_code"}]} for n in ("instruct", "code", "ppl")])
    study.set_user_attr("baseline_scores", {
        p.key: {"objectives": {"instruct": 0.1, "code": 0.1, "ppl": 9.0}, "tasks": {}}
        for _, _, p in baseline_plans(["a", "b"])
    })
    report = build_report(view_of(cfg, study, "sqlite:///x.db"), heldout=False)
    assert [r["trial"] for r in report["front"]] == [1, 0, 2]  # (0.4, 0.4, 2.5) is dominated
    assert report["knee_trial"] == 0
    # reference (0, 0, 3): (0.5,0.5,2) adds 0.25, the extremes lie on the reference planes
    assert report["hypervolume"]["value"] == pytest.approx(0.5 * 0.5 * 1.0)
    for name in ("three.png", "three.html"):
        assert write_plot(report, tmp_path / name).stat().st_size > 1000
