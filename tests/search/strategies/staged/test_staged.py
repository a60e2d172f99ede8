"""Staged scoring that races the front, on the tiny pool with built cases.

The tasks are multiple-choice items chosen by how the tiny pool's checkpoints answer them
(each checkpoint's choice: lm-eval's own log-likelihoods). ``pick_a``: half items where ft_a and
ft_b agree and ft_c does not, half where all three differ, each labeled with ft_a's choice;
``pick_b`` the same with ft_b's. So ft_a scores (1, 0.5) on (pick_a, pick_b), ft_b (0.5, 1) and
ft_c (0, 0): ft_c is clearly worse than the front {ft_a, ft_b} on both objectives, and ft_a and
ft_b are each on the front.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml

from search.cli import main
from search.errors import DeprecatedSetting, UserError
from search.strategies.staged import StagedFields
from search.strategies.staged.racing import plan_rungs
from search.study.config import load_config
from search.study.record import TrialRecord, decode_examples
from tests.search.study_fixtures import (
    REPO,
    build_pool_and_tasks,
    complete,
    study_config,
    write_config,
)
from tests.toy_tasks import write_choice_task

ITEMS = 60  # items kept per built task: rungs of 25, 30, 60 (0.125 and 0.25 merge at 25)
CANDIDATES = 2000  # items generated to find those


def _choices_of(folder: Path, tasks: Path, task: str) -> list[int]:
    """Each item's choice by the checkpoint in ``folder``: lm-eval's highest log-likelihood."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators.lm_eval_evaluator import LmEvalEvaluator
    from evaluators.spec import EvalSpec, ObjectiveSpec

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    objective = ObjectiveSpec(name="x", tasks=[{"task": task, "metric": "acc"}])
    ev = LmEvalEvaluator([objective], EvalSpec(tasks_path=tasks, batch_size=64), model, tok)
    samples = sorted(ev.run_tasks()["samples"][task], key=lambda s: s["doc_id"])
    return [int(np.argmax([float(r[0]) for r in s["filtered_resps"]])) for s in samples]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_zoo: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("staged")
    paths = build_pool_and_tasks(root, tiny_zoo)
    tasks = Path(paths["tasks_path"])
    rng = random.Random(0)
    letters = "abcdefghij"
    rows = [
        (
            "".join(rng.choice(letters) for _ in range(6)) + "=",
            ["".join(rng.choice(letters) for _ in range(3)) for _ in range(4)],
            0,
        )
        for _ in range(CANDIDATES)
    ]
    write_choice_task(tasks, "pick_all", rows)
    a, b, c = (_choices_of(Path(p), tasks, "pick_all") for p in paths["checkpoints"])
    agree = [i for i in range(CANDIDATES) if a[i] == b[i] != c[i]]
    differ = [i for i in range(CANDIDATES) if len({a[i], b[i], c[i]}) == 3]
    half = ITEMS // 2
    assert len(agree) >= 2 * half and len(differ) >= 2 * half, (len(agree), len(differ))
    for name, pick, part in (("pick_a", a, 0), ("pick_b", b, 1)):
        chosen = agree[part * half : (part + 1) * half] + differ[part * half : (part + 1) * half]
        write_choice_task(tasks, name, [(*rows[i][:2], pick[i]) for i in sorted(chosen)])
    return paths


def _config(built: dict[str, Any], tmp_path: Path, objectives: list[str], **extra: Any) -> Path:
    settings: dict[str, Any] = {
        "objectives": [
            {"name": task, "tasks": [{"task": task, "metric": "acc"}]} for task in objectives
        ],
        "merge": {"method": "linear"},
        "eval": {"batch_size": 64, "staged": {}},
        "seed_trials": ["singles"],
        "budget": {"n_trials": 3},
        "sampler": {"name": "tpe", "seed": 0},
    }
    data = study_config(built, "staged", f"sqlite:///{tmp_path / 'staged.db'}", **settings)
    data.update(extra)
    return write_config(tmp_path / "staged.yaml", data)


def _trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="staged", storage=f"sqlite:///{tmp_path / 'staged.db'}")
    return sorted(complete(study.get_trials()), key=lambda t: t.number)


def test_a_worse_merge_stops_at_the_first_rung_and_front_merges_never(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(built, tmp_path, ["pick_a", "pick_b"])
    assert main(["launch", str(config), "--workers", "1"]) == 0
    a, b, c = _trials(tmp_path)  # the singles, in pool order: ft_a, ft_b, ft_c
    for front in (a, b):
        assert not TrialRecord.from_trial(front).stopped
        assert _staged(front).rung == _staged(front).rungs == 3
        assert TrialRecord.from_trial(front).examples_scored == 2 * ITEMS
        assert _staged(front).violation == 0.0
    assert a.values == [1.0, 0.5] and b.values == [0.5, 1.0]
    assert TrialRecord.from_trial(c).stopped_by in (a.number, b.number)
    assert _staged(c).rung == 1
    assert TrialRecord.from_trial(c).examples_scored == 2 * 25  # the first rung of each task
    assert _staged(c).violation == pytest.approx(1 - 50 / 120)
    assert TrialRecord.from_trial(c).examples == {}  # partial values are not a merge's scores
    assert c.values == [0.0, 0.0]  # its means over the examples it scored
    # stopped trials are infeasible for the sampler too (the racing constraint)
    assert c.system_attrs["constraints"][-1] > 0 and a.system_attrs["constraints"] == [0.0]

    capsys.readouterr()
    assert main(["pareto", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {p["trial"] for p in report["front"]} == {a.number, b.number}
    assert report["knee_trial"] in (a.number, b.number)
    out = tmp_path / "export"
    assert main(["export", str(config), "--trial", str(c.number), "--out", str(out)]) == 2
    assert f"stopped early (trial {a.number} beat it)" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", str(config), "--knee", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert f"| trial | {c.number} |" not in card


def test_a_full_raced_trial_scores_what_a_full_evaluation_scores(
    built: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(built, tmp_path, ["pick_a", "pick_b"], budget={"n_trials": 1})
    assert main(["launch", str(config), "--workers", "1"]) == 0
    (raced,) = _trials(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    data = yaml.safe_load(config.read_text())
    data["eval"]["staged"] = None
    data["storage"] = f"sqlite:///{plain / 'staged.db'}"
    assert main(["launch", str(write_config(plain / "plain.yaml", data)), "--workers", "1"]) == 0
    (full,) = _trials(plain)
    assert raced.values == full.values
    assert TrialRecord.from_trial(raced).task_scores == TrialRecord.from_trial(full).task_scores
    assert TrialRecord.from_trial(raced).stderr == pytest.approx(
        TrialRecord.from_trial(full).stderr
    )
    assert decode_examples(TrialRecord.from_trial(raced).examples) == decode_examples(
        TrialRecord.from_trial(full).examples
    )


def test_one_objective_races_with_optunas_wilcoxon_pruner(
    built: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(built, tmp_path, ["pick_a"])
    assert main(["launch", str(config), "--workers", "1"]) == 0
    a, b, c = _trials(tmp_path)
    assert not TrialRecord.from_trial(a).stopped and a.values == [1.0]
    assert len(a.intermediate_values) == ITEMS  # one step per example: the pruner's pairs
    for worse in (b, c):
        assert TrialRecord.from_trial(worse).stopped_by == a.number
        assert _staged(worse).rung == 1 and TrialRecord.from_trial(worse).examples_scored == 25
        assert set(worse.intermediate_values) <= set(a.intermediate_values)
    study = optuna.load_study(study_name="staged", storage=f"sqlite:///{tmp_path / 'staged.db'}")
    assert study.best_trial.number == a.number


def test_the_rungs_are_the_same_in_every_process() -> None:
    counts = {"demo_code": 200, "demo_instruct": 200, "small": 30}
    here = plan_rungs(counts, [0.125, 0.25, 0.5, 1.0], seed=3)
    code = (
        "import json; from search.strategies.staged.racing import plan_rungs; "
        f"print(json.dumps(plan_rungs({counts!r}, [0.125, 0.25, 0.5, 1.0], seed=3)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    there = [{k: tuple(v) for k, v in rung.items()} for rung in json.loads(out.stdout)]
    assert there == list(here)


def _staged(trial) -> StagedFields:
    fields = StagedFields.of(TrialRecord.from_trial(trial), "staged")
    assert fields is not None
    return fields


def test_staged_scoring_of_a_perplexity_objective_is_refused_before_any_work(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = study_config(
        built,
        "ppl",
        f"sqlite:///{tmp_path / 'ppl.db'}",
        eval={"staged": True},
    )
    config = write_config(tmp_path / "ppl.yaml", data)
    assert main(["launch", str(config)]) == 2
    err = capsys.readouterr().err
    assert "eval.staged" in err and "perplexity" in err and len(err.strip().splitlines()) == 1


def test_the_old_key_eval_racing_still_works_with_one_warning_line(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = study_config(
        built, "old", f"sqlite:///{tmp_path / 'old.db'}", eval={"racing": {"rungs": [0.5, 1.0]}}
    )
    data["objectives"] = [o for o in data["objectives"] if o.get("evaluator") != "perplexity"]
    config = write_config(tmp_path / "old.yaml", data)
    with pytest.warns(DeprecatedSetting, match="eval.racing is deprecated, use eval.staged"):
        cfg = load_config(config)
    (staged,) = cfg.strategies
    assert staged.name == "staged" and staged.settings.rungs == (0.5, 1.0)
    assert cfg.to_json()["eval"]["staged"] == {"rungs": [0.5, 1.0]}  # recorded under the new key
    data["eval"]["staged"] = {}
    with pytest.raises(UserError, match="eval.racing: the old name of eval.staged; give only one"):
        load_config(write_config(tmp_path / "both.yaml", data))
    assert not (tmp_path / "ppl.db").exists()


def test_a_resumed_study_counts_the_examples_its_stopped_trials_scored(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def launch(n_trials: int) -> int:
        budget = {"n_trials": n_trials, "examples": 360}  # three full evaluations of 120
        return main(["launch", str(_config(built, tmp_path, ["pick_a", "pick_b"], budget=budget))])

    assert launch(2) == 0  # ft_a, ft_b: scored in full
    assert launch(3) == 0  # resumed: ft_c, stopped after its first rung
    assert "1 stopped early by staged scoring), 2.4 full evaluations (290/360 examples" in (
        capsys.readouterr().err
    )
    assert [TrialRecord.from_trial(t).examples_scored for t in _trials(tmp_path)] == [120, 120, 50]
    assert launch(50) == 0  # 290 + one full evaluation (120) no longer fits in 360
    assert "has already spent its budget of 50 trials or 360 examples" in capsys.readouterr().err
    assert len(_trials(tmp_path)) == 3
