"""`merge-search pareto` shows every value with its standard error and the examples behind it."""

from __future__ import annotations

import json

import optuna
import pytest

from evaluators.stats import mean_stderr
from search.cli import main
from search.report.pareto_report import build_report
from search.report.scores import HELDOUT_ATTR, SplitScores
from search.report.table import format_report
from search.report.view import view_of
from search.study.record import decode_examples, encode_examples
from tests.search.report_fixtures import MAX2, make_config, make_trial


def test_values_and_standard_errors_side_by_side_in_json_and_table():
    study = optuna.create_study(directions=MAX2)
    study.set_metric_names(["instruct", "code"])
    rows = [([0.9, 0.1], "ka", "single:a"), ([0.6, 0.6], "kb", None), ([0.4, 0.4], "kd", "uniform")]
    for i, (values, key, seed) in enumerate(rows):
        trial = make_trial(values, key, seed=seed)
        trial.set_user_attr("stderr", {"instruct": 0.01 * (i + 1), "code": None})
        trial.set_user_attr("examples", encode_examples({"demo_code/exact_match": (1.0, 0.0) * 5}))
        study.add_trial(trial)
    study.add_trial(make_trial([0.1, 0.9], "kc", seed="single:b"))  # recorded without stderr
    built = build_report(view_of(make_config(), study, "sqlite:///x.db"), heldout=False)
    report = built.to_json()
    front = {r["trial"]: r for r in report["front"]}
    assert front[1]["stderr"] == {"instruct": 0.02, "code": None}
    assert front[3]["stderr"] == {"instruct": None, "code": None}
    assert {b["label"]: b["stderr"]["instruct"] for b in report["baselines"]} == {
        "uniform": pytest.approx(0.03),
        "a": 0.01,
        "b": None,
    }
    assert report["examples"]["search"] == {"demo_code/exact_match": 10}
    assert json.loads(json.dumps(report)) == report
    text = format_report(built)
    assert "0.6000 ± 0.0200" in text and "0.4000 ± 0.0300" in text
    assert "value ± standard error; examples per trial: demo_code/exact_match 10" in text


def test_pareto_after_launch_carries_standard_errors(launched, capsys):
    from search.report.view import open_view

    assert main(["pareto", str(launched), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    view = open_view(launched)
    rows = {r.number: r for r in view.rows}
    held = {  # the held-out scores `pareto` cached in the study, by plan key
        key: SplitScores.from_json(data)
        for key, data in view.study.user_attrs[HELDOUT_ATTR]["scores"].items()
    }

    def assert_heldout_stderr(entry, plan_key):
        scores = held[plan_key]
        picks = decode_examples(scores.examples)["c2_pick_heldout/acc"]
        assert entry["heldout_stderr"]["pick"] == pytest.approx(mean_stderr(picks))
        assert entry["heldout_stderr"]["ppl"] == pytest.approx(scores.stderr["ppl"])

    for r in report["front"]:
        record = rows[r["trial"]].record
        picks = record.per_example()["c2_pick/acc"]
        assert r["stderr"]["pick"] == pytest.approx(mean_stderr(picks))
        assert r["stderr"]["ppl"] == pytest.approx(record.stderr["ppl"])  # what the trial recorded
        assert_heldout_stderr(r, record.plan_key)
    for b in report["baselines"]:  # seed trial or scored here: both with standard errors
        assert None not in b["stderr"].values(), b
    # held-out: the uniform merge, the knee's reference, is re-scored with its standard errors
    (uniform,) = [b for b in report["baselines"] if b["kind"] == "uniform"]
    assert_heldout_stderr(uniform, uniform["plan_key"])
    assert report["examples"] == {
        "search": {"c2_pick/acc": 6, "text.txt/perplexity": 3},
        "heldout": {"c2_pick_heldout/acc": 6, "text.txt/perplexity": 3},
    }
    assert main(["pareto", str(launched)]) == 0
    text = capsys.readouterr().out
    assert " ± " in text and "examples per trial: c2_pick/acc 6, text.txt/perplexity 3" in text
    assert "held-out examples: c2_pick_heldout/acc 6" in text
