"""An objective's ``signal``: the search scores it (the gold answer's log-probability), the
held-out and test re-scores and the choice score its tasks (exact match)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main
from search.study.config import StudyConfig
from search.study.record import TrialRecord

TASKS = Path(__file__).resolve().parents[3] / "configs" / "tasks" / "demo"
SPLITS = {
    "heldout": {"demo_instruct": "demo_instruct_heldout", "demo_code": "demo_code_heldout"},
    "test": {"demo_instruct": "demo_instruct_test", "demo_code": "demo_code_test"},
}


def objectives(signal: bool = True) -> list[dict]:
    out = []
    for name, skill in (("instruct", "demo_instruct"), ("code", "demo_code")):
        obj = {"name": name, "tasks": [{"task": skill, "metric": "exact_match"}]}
        if signal:
            obj["search_tasks"] = [{"task": f"{skill}_signal", "metric": "gold_logprob"}]
        out.append(obj)
    return out


def config(**extra) -> StudyConfig:
    data = {
        "name": "signal",
        "storage": "sqlite:///unused.db",
        "checkpoints": ["pool/a", "pool/b"],
        "objectives": objectives(),
        "eval": {"heldout": SPLITS["heldout"], "test": SPLITS["test"]},
        **extra,
    }
    return StudyConfig.model_validate(data)


def test_the_search_split_scores_the_signal_and_the_other_splits_the_tasks():
    cfg = config()
    search = cfg.split_objectives("search")
    assert [t.task for o in search for t in o.tasks] == ["demo_instruct_signal", "demo_code_signal"]
    assert {t.metric for o in search for t in o.tasks} == {"gold_logprob"}
    for split in ("heldout", "test"):
        mapped = cfg.split_objectives(split)
        assert [t.task for o in mapped for t in o.tasks] == list(SPLITS[split].values())
        assert all(not o.search_tasks and o.tasks[0].metric == "exact_match" for o in mapped)
    # without a signal the search split is the configured objectives themselves
    plain = config(objectives=objectives(signal=False))
    assert plain.split_objectives("search") == plain.objectives


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"eval": {}}, "objectives: 'instruct' has search_tasks, which need eval.heldout"),
        (
            {"constraints": [{"objective": "code", "min": 0.3}]},
            "constraints[0].objective: 'code' searches on its search_tasks",
        ),
        (
            {
                "objectives": [
                    {
                        "name": "ppl",
                        "evaluator": "perplexity",
                        "data": "x.txt",
                        "search_tasks": [{"task": "demo_code_signal"}],
                    }
                ]
            },
            "search_tasks applies to lm_eval objectives",
        ),
    ],
)
def test_a_signal_the_study_cannot_use_is_refused(extra, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        config(**extra)


def test_the_old_key_signal_still_works_with_a_deprecation_warning():
    from search.errors import DeprecatedSetting

    old = objectives()
    for obj in old:
        obj["signal"] = obj.pop("search_tasks")
    with pytest.warns(DeprecatedSetting, match="objectives\\[\\].signal is deprecated"):
        cfg = config(objectives=old)
    assert cfg.objectives == config().objectives
    both = [{**old[0], "search_tasks": old[0]["signal"]}, old[1]]
    with pytest.raises(ValueError, match="signal: the old name of search_tasks"):
        config(objectives=both)


def test_a_study_searches_on_the_signal_and_chooses_on_exact_match(tiny_zoo, tmp_path, capsys):
    data = {
        "name": "signalled",
        "storage": f"sqlite:///{tmp_path / 'studies.db'}",
        "checkpoints": [str(p) for p in tiny_zoo.checkpoints],
        "base_model": str(tiny_zoo.base),
        "merge": {"method": "linear", "weights": {"normalize": True}},
        "objectives": objectives(),
        "tasks_path": str(TASKS),
        "eval": {"limit": 16, "batch_size": 16, **SPLITS},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": 3},
        "seed_trials": ["uniform"],
        "device": "cpu",
        "dtype": "float32",
    }
    path = tmp_path / "signalled.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["launch", str(path)]) == 0
    study = optuna.load_study(study_name="signalled", storage=data["storage"])
    done = [TrialRecord.from_trial(t) for t in study.trials]
    assert len(done) == 3
    for record in done:
        # the search values are mean log-probabilities of the gold answers: negative, and not
        # proportions (a tiny random model gives each answer far below e^-1 of the mass)
        assert all(v < -1.0 for v in record.values), record.values
        assert set(record.task_scores) == {
            "demo_instruct_signal/gold_logprob",
            "demo_code_signal/gold_logprob",
        }
    capsys.readouterr()
    assert main(["pareto", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [o["search_tasks"] for o in report["objectives"]] == [True, True]
    for row in report["front"]:
        assert all(0.0 <= v <= 1.0 for v in row["heldout"].values())  # exact match, held out
    assert report["examples"]["heldout"] == {
        "demo_instruct_heldout/exact_match": 16,
        "demo_code_heldout/exact_match": 16,
    }
    assert main(["pareto", str(path), "--no-heldout"]) == 0
    assert (
        "search values of instruct, code: the objective's search_tasks" in capsys.readouterr().out
    )
