"""A study scored with ``eval.backend: vllm`` end to end: 2 workers, a resume, an export.

Each worker holds one in-process vLLM engine (CPU build) and reloads every merge into it; the
export re-scores the front on the held-out split and the chosen merge and the inputs on the
test split, with vLLM too. The trials' scores must be those the ``hf`` back end gives the same
plans.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from search.cli import main
from search.study.record import TrialRecord
from tests.search.study_fixtures import CHOICES, complete, trials, write_config
from tests.toy_tasks import write_choice_task

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("vllm_available")]


def _config(vllm_zoo: Any, root: Path, **eval_settings: Any) -> dict[str, Any]:
    """Two objectives: the demo instruction task (generation, exact_match) and a multiple-choice
    task (acc, which moves with these random weights), with held-out and test splits."""
    tasks = root / "tasks"
    shutil.copytree(vllm_zoo.tasks_path, tasks)
    for split in ("", "_heldout", "_test"):
        write_choice_task(tasks, f"c1_pick{split}", CHOICES)
    pairs = {"demo_instruct": "instruct", "c1_pick": "pick"}
    return {
        "name": "vllm_demo",
        "storage": f"sqlite:///{root / 'vllm_demo.db'}",
        "checkpoints": [str(c) for c in vllm_zoo.checkpoints],
        "base_model": str(vllm_zoo.base),
        "merge": {"method": "linear", "weights": {"normalize": True}},
        "objectives": [{"name": name, "tasks": [{"task": task}]} for task, name in pairs.items()],
        "tasks_path": str(tasks),
        "eval": {
            "limit": 16,
            "batch_size": 16,
            "heldout": {t: f"{t}_heldout" for t in pairs},
            "test": {t: f"{t}_test" for t in pairs},
            "racing": {"rungs": [0.5, 1.0]},
            **eval_settings,
        },
        "sampler": {"name": "nsga2", "seed": 0, "options": {"population_size": 4}},
        "budget": {"n_trials": 4},
        "workers": {"threads": 1, "heartbeat_s": 5},
        "seed_trials": ["uniform"],
        "device": "cpu",
        "dtype": "float32",
    }


VLLM = {"backend": "vllm", "vllm": {"cpu_kv_cache_gib": 0.25, "enforce_eager": True}}


@pytest.fixture(scope="module")
def study(vllm_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vllm_study")
    data = _config(vllm_zoo, root, **VLLM)
    config = write_config(root / "vllm.yaml", data)
    first = main(["launch", str(config), "--workers", "2"])
    before = trials(data["name"], data["storage"])
    resumed = main(["launch", str(config), "--workers", "2", "--n-trials", "6"])
    after = trials(data["name"], data["storage"])
    out = root / "export"
    exported = main(["export", str(config), "--knee", "--out", str(out)])
    return {
        "root": root,
        "data": data,
        "codes": (first, resumed, exported),
        "before": before,
        "after": after,
        "out": out,
    }


def test_two_workers_run_resume_and_export(study: dict[str, Any]) -> None:
    assert study["codes"] == (0, 0, 0)
    assert (
        len(complete(study["before"]))
        + sum(t.state == optuna.trial.TrialState.PRUNED for t in study["before"])
        == 4
    )
    finished = [t for t in study["after"] if t.state.is_finished()]
    assert len(finished) == 6
    records = [TrialRecord.from_trial(t) for t in complete(study["after"])]
    workers = {r.worker.split(":")[1] for r in records}
    assert len(workers) >= 2  # two worker processes, each with its engine
    assert (study["out"] / "config.json").is_file()
    assert any(study["out"].glob("*.safetensors"))


def test_trials_score_as_the_hf_back_end_scores_their_plans(
    study: dict[str, Any], vllm_zoo: Any
) -> None:
    from search.engine.plan import MergePlan
    from search.study.config import StudyConfig
    from search.study.worker import Runtime

    data = {**study["data"], "eval": {**study["data"]["eval"], "racing": None}}
    data["eval"].pop("backend")
    data["eval"].pop("vllm")
    cfg = StudyConfig.model_validate(yaml.safe_load(yaml.safe_dump(data)))
    runtime = Runtime.create(cfg, threads=1)
    records = [TrialRecord.from_trial(t) for t in complete(study["after"])]
    scored = [r for r in records if r.duplicate_of is None and not r.stopped]
    assert scored
    for r in scored:
        scores, _, _ = runtime.score(MergePlan.from_dict(r.plan))
        assert list(r.values) == [scores.objectives[n] for n in ("instruct", "pick")], r.number
        assert r.task_scores == pytest.approx(scores.tasks), r.number
