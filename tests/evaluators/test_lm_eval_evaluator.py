"""The lm-eval evaluator on real tiny models and the real harness (no fakes)."""

from __future__ import annotations

import math

import pytest

from evaluators import EvalSpec, ObjectiveSpec, TaskRef, build_evaluator
from evaluators.lm_eval_evaluator import LmEvalEvaluator, weighted_mean
from search.errors import UserError
from tests.evaluators.eval_fixtures import copy_weights_in_place, load, write_task_folder

LIMIT = 6


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory, demo_tasks_path):
    return write_task_folder(tmp_path_factory.mktemp("tasks") / "tasks", demo_tasks_path)


@pytest.fixture(scope="module")
def spec(tasks_dir):
    return EvalSpec(tasks_path=tasks_dir, limit=LIMIT, batch_size=4)


def objectives():
    return [
        ObjectiveSpec(
            name="mix",
            tasks=(
                TaskRef(task="tiny_ppl", metric="word_perplexity", weight=1.0),
                TaskRef(task="tiny_ppl", metric="bits_per_byte", weight=3.0),
            ),
        ),
        ObjectiveSpec(name="code", tasks=(TaskRef(task="demo_code"),)),
    ]


@pytest.fixture(scope="module")
def resident(demo_zoo, spec):
    """The base model resident, with one evaluator built once for it."""
    model, tokenizer = load(demo_zoo.base)
    return model, tokenizer, build_evaluator(objectives(), spec, model, tokenizer)


def test_in_place_swap_scores_like_loading_from_disk(resident, demo_zoo, spec):
    model, tokenizer, evaluator = resident
    for folder in demo_zoo.checkpoints[:2]:
        copy_weights_in_place(model, folder)
        swapped = evaluator.evaluate(model, tokenizer)
        fresh_model, fresh_tok = load(folder)
        fresh_ev = build_evaluator(objectives(), spec, fresh_model, fresh_tok)
        fresh = fresh_ev.evaluate(fresh_model, fresh_tok)
        assert swapped.tasks.keys() == fresh.tasks.keys()
        for key, value in fresh.tasks.items():
            assert swapped.tasks[key] == pytest.approx(value, rel=1e-6), key
        assert swapped.objectives == pytest.approx(fresh.objectives, rel=1e-6)


def test_scores_follow_the_weights_and_come_back(resident, demo_zoo):
    model, tokenizer, evaluator = resident
    copy_weights_in_place(model, demo_zoo.base)
    first = evaluator.evaluate(model, tokenizer)
    copy_weights_in_place(model, demo_zoo.checkpoints[-1])
    other = evaluator.evaluate(model, tokenizer)
    copy_weights_in_place(model, demo_zoo.base)
    again = evaluator.evaluate(model, tokenizer)
    key = "tiny_ppl/word_perplexity"
    assert other.tasks[key] != pytest.approx(first.tasks[key])
    assert again == first


def test_objective_is_the_weighted_mean_of_its_tasks(resident):
    model, tokenizer, evaluator = resident
    scores = evaluator.evaluate(model, tokenizer)
    tasks = scores.tasks
    expected = (tasks["tiny_ppl/word_perplexity"] + 3 * tasks["tiny_ppl/bits_per_byte"]) / 4
    assert scores.objectives["mix"] == pytest.approx(expected)
    assert scores.objectives["code"] == scores.tasks["demo_code/exact_match"]
    assert 0.0 <= scores.objectives["code"] <= 1.0
    assert weighted_mean([(1.0, 1.0), (0.0, 3.0)]) == 0.25


def test_default_metric_is_the_tasks_first_metric(resident, spec):
    model, tokenizer, _ = resident
    objective = ObjectiveSpec(name="p", tasks=(TaskRef(task="tiny_ppl"),))
    ev = LmEvalEvaluator([objective], spec, model, tokenizer)
    assert list(ev.evaluate(model, tokenizer).tasks) == ["tiny_ppl/word_perplexity"]


def test_limit_per_task_overrides_the_spec(resident, spec):
    model, tokenizer, _ = resident
    refs = (TaskRef(task="demo_code", limit=2), TaskRef(task="demo_instruct"))
    ev = LmEvalEvaluator([ObjectiveSpec(name="o", tasks=refs)], spec, model, tokenizer)
    assert ev.examples_per_task() == {"demo_code": 2, "demo_instruct": LIMIT}


def test_unknown_task_is_named_with_what_exists(resident, spec):
    model, tokenizer, _ = resident
    bad = [ObjectiveSpec(name="x", tasks=(TaskRef(task="demo_cod"),))]
    message = r"objective 'x': unknown lm-eval task 'demo_cod'.*demo_code"
    with pytest.raises(UserError, match=message):
        build_evaluator(bad, spec, model, tokenizer)


def test_missing_metric_lists_the_tasks_metrics(resident, spec):
    model, tokenizer, _ = resident
    bad = [ObjectiveSpec(name="x", tasks=(TaskRef(task="demo_code", metric="acc"),))]
    message = r"task 'demo_code' has no metric 'acc'; it produces: exact_match"
    with pytest.raises(UserError, match=message):
        build_evaluator(bad, spec, model, tokenizer)


def test_conflicting_settings_for_one_task_are_refused(resident, spec):
    model, tokenizer, _ = resident
    bad = [
        ObjectiveSpec(name="a", tasks=(TaskRef(task="demo_code", limit=2),)),
        ObjectiveSpec(name="b", tasks=(TaskRef(task="demo_code", limit=3),)),
    ]
    with pytest.raises(UserError, match="'demo_code' is used elsewhere with another limit"):
        build_evaluator(bad, spec, model, tokenizer)


def test_nan_score_is_a_user_error_naming_the_task(demo_zoo, spec):
    import torch

    model, tokenizer = load(demo_zoo.base)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(math.nan)
    objective = ObjectiveSpec(name="p", tasks=(TaskRef(task="tiny_ppl"),))
    ev = build_evaluator([objective], spec, model, tokenizer)
    with pytest.raises(UserError, match=r"task 'tiny_ppl': metric 'word_perplexity,none' is NaN"):
        ev.evaluate(model, tokenizer)


def test_relative_data_paths_resolve_against_the_yaml_folder(
    demo_zoo, demo_tasks_path, tmp_path, monkeypatch
):
    # the tasks folder is used from an unrelated working directory
    monkeypatch.chdir(tmp_path)
    model, tokenizer = load(demo_zoo.base)
    spec = EvalSpec(tasks_path=demo_tasks_path, limit=2, batch_size=2)
    skills = ("code", "instruct")
    objs = [ObjectiveSpec(name=s, tasks=(TaskRef(task=f"demo_{s}_heldout"),)) for s in skills]
    scores = build_evaluator(objs, spec, model, tokenizer).evaluate(model, tokenizer)
    assert set(scores.tasks) == {f"demo_{s}_heldout/exact_match" for s in ("code", "instruct")}


def test_evaluator_is_bound_to_its_model(resident, demo_zoo):
    _, tokenizer, evaluator = resident
    other, _ = load(demo_zoo.base)
    with pytest.raises(ValueError, match="model object it was built with"):
        evaluator.evaluate(other, tokenizer)
