"""build_evaluator and the contract every registered evaluator keeps."""

from __future__ import annotations

import math

import pytest

from evaluators import (
    EVALUATORS,
    CompositeEvaluator,
    EvalSpec,
    ObjectiveSpec,
    TaskRef,
    build_evaluator,
)
from search.errors import UserError
from tests.evaluators.eval_fixtures import TEXTS, copy_weights_in_place, load, write_task_folder


@pytest.fixture(scope="module")
def setting(tmp_path_factory, demo_tasks_path, demo_zoo):
    root = tmp_path_factory.mktemp("builder")
    tasks = write_task_folder(root / "tasks", demo_tasks_path)
    (root / "guard.txt").write_text("\n".join(TEXTS))
    model, tok = load(demo_zoo.base)
    return {"tasks": tasks, "guard": root / "guard.txt", "model": model, "tok": tok}


def _objective(kind, setting, name=None):
    if kind == "lm_eval":
        ref = TaskRef(task="tiny_ppl", metric="bits_per_byte")
        return ObjectiveSpec(name=name or "lm", tasks=(ref,))
    return ObjectiveSpec(
        name=name or "ppl", evaluator="perplexity", direction="minimize", data=setting["guard"]
    )


@pytest.mark.parametrize("kind", sorted(EVALUATORS))
def test_contract_finite_deterministic_and_following_the_weights(kind, setting, demo_zoo):
    model, tok = setting["model"], setting["tok"]
    spec = EvalSpec(tasks_path=setting["tasks"], limit=4, batch_size=4)
    objective = _objective(kind, setting)
    ev = EVALUATORS[kind]([objective], spec, model, tok)
    copy_weights_in_place(model, demo_zoo.base)
    first = ev.evaluate(model, tok)
    assert set(first.objectives) == {objective.name}
    assert all(math.isfinite(v) for v in [*first.objectives.values(), *first.tasks.values()])
    copy_weights_in_place(model, demo_zoo.checkpoints[1])
    moved = ev.evaluate(model, tok)
    copy_weights_in_place(model, demo_zoo.base)
    assert moved.objectives[objective.name] != pytest.approx(first.objectives[objective.name])
    assert ev.evaluate(model, tok) == first


def test_mixed_objectives_get_one_composite_evaluator(setting):
    model, tok = setting["model"], setting["tok"]
    spec = EvalSpec(tasks_path=setting["tasks"], limit=4, batch_size=4)
    objectives = [_objective("lm_eval", setting), _objective("perplexity", setting)]
    ev = build_evaluator(objectives, spec, model, tok)
    assert isinstance(ev, CompositeEvaluator)
    scores = ev.evaluate(model, tok)
    assert set(scores.objectives) == {"lm", "ppl"}
    assert set(scores.tasks) == {"tiny_ppl/bits_per_byte", "guard.txt/perplexity"}
    assert scores.objectives["ppl"] == scores.tasks["guard.txt/perplexity"]


def test_single_kind_is_not_wrapped(setting):
    objective = _objective("perplexity", setting)
    ev = build_evaluator([objective], EvalSpec(), setting["model"], setting["tok"])
    assert not isinstance(ev, CompositeEvaluator)


def test_duplicate_and_missing_objectives_are_refused(setting):
    model, tok = setting["model"], setting["tok"]
    with pytest.raises(UserError, match="duplicate objective names ppl"):
        build_evaluator([_objective("perplexity", setting)] * 2, EvalSpec(), model, tok)
    with pytest.raises(UserError, match="at least one objective"):
        build_evaluator([], EvalSpec(), model, tok)


@pytest.mark.parametrize("kind", sorted(EVALUATORS))
def test_contract_per_example_values_standard_errors_and_docs(kind, setting):
    model, tok = setting["model"], setting["tok"]
    spec = EvalSpec(tasks_path=setting["tasks"], limit=4, batch_size=4)
    objective = _objective(kind, setting)
    ev = EVALUATORS[kind]([objective], spec, model, tok)
    counts = ev.examples_per_task()
    scores = ev.evaluate(model, tok)
    assert set(scores.examples) == set(scores.tasks) == set(scores.task_stderr)
    assert set(scores.stderr) == {objective.name}
    for key, values in scores.examples.items():
        assert len(values) == counts[key.split("/")[0]] == 4
    # one task: the objective carries that task's standard error; four different texts scored
    # on a continuous metric give one that is positive and below the per-text spread
    ((key, values),) = scores.examples.items()
    se = scores.stderr[objective.name]
    assert se == scores.task_stderr[key]
    assert 0 < se < max(values) - min(values)
    task = next(iter(counts))
    part = ev.evaluate(model, tok, docs={task: [3, 0]})
    for key, values in part.examples.items():
        assert values == pytest.approx([scores.examples[key][0], scores.examples[key][3]])
    with pytest.raises(ValueError, match="docs"):
        ev.evaluate(model, tok, docs={"no-such-task": [0]})


def test_composite_routes_docs_and_counts(setting):
    model, tok = setting["model"], setting["tok"]
    spec = EvalSpec(tasks_path=setting["tasks"], limit=4, batch_size=4)
    ev = build_evaluator(
        [_objective("lm_eval", setting), _objective("perplexity", setting)], spec, model, tok
    )
    assert ev.examples_per_task() == {"tiny_ppl": 4, "guard.txt": 4}
    part = ev.evaluate(model, tok, docs={"guard.txt": [1]})
    assert len(part.examples["guard.txt/perplexity"]) == 1
    assert len(part.examples["tiny_ppl/bits_per_byte"]) == 4
    assert set(part.stderr) == {"lm", "ppl"}
