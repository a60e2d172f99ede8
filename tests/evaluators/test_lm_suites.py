"""Suites as lm-eval users run them: groups, tags, chat templates, code tasks, per-example results.

Every score is checked against lm-eval's own ``simple_evaluate`` on the same model with the same
settings (real harness, real tiny model, real task files).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from evaluators import EvalSpec, ObjectiveSpec, TaskRef, build_evaluator
from evaluators.stats import mean_stderr
from search.errors import UserError
from tests.evaluators.eval_fixtures import load, write_suite_folder
from tests.toy_tasks import choice_task

SYSTEM = "Answer in one word."


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_suite_folder(tmp_path_factory.mktemp("suite") / "tasks")


@pytest.fixture(scope="module")
def model_tok(demo_zoo):
    return load(demo_zoo.base)


def _spec(suite, **settings):
    return EvalSpec(tasks_path=suite, batch_size=4, **settings)


def _objective(name, *tasks, **ref):
    return ObjectiveSpec(name=name, tasks=tuple(TaskRef(task=t, **ref) for t in tasks))


def _simple(model, tok, suite, tasks, **kwargs):
    """lm-eval's own simple_evaluate on the same model object and settings."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=4),
        tasks=tasks,
        task_manager=TaskManager(include_path=str(suite), include_defaults=False),
        bootstrap_iters=kwargs.pop("bootstrap_iters", 0),
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
        **kwargs,
    )


def _logged(out, task, metric):
    return [s[metric] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]


# ------------------------------------------------------------------------------------ groups


def test_group_scores_as_simple_evaluate_with_its_subtasks(model_tok, suite):
    model, tok = model_tok
    ev = build_evaluator([_objective("g", "pick_group")], _spec(suite), model, tok)
    scores = ev.evaluate(model, tok)
    ref = _simple(model, tok, suite, ["pick_group"], bootstrap_iters=10)
    group = ref["groups"]["pick_group"]
    assert scores.objectives["g"] == pytest.approx(group["acc,none"], abs=1e-12)
    assert scores.tasks["pick_group/acc"] == scores.objectives["g"]
    for task in ("pick_a", "pick_b"):  # task_scores records each subtask too
        assert scores.tasks[f"{task}/acc"] == pytest.approx(ref["results"][task]["acc,none"])
        assert scores.task_stderr[f"{task}/acc"] == pytest.approx(
            ref["results"][task]["acc_stderr,none"]
        )
    # size-weighted, not the plain mean of the two subtasks (8 and 4 documents)
    a, b = scores.tasks["pick_a/acc"], scores.tasks["pick_b/acc"]
    assert scores.objectives["g"] == pytest.approx((8 * a + 4 * b) / 12)
    # the group's per-example values: its subtasks' concatenated in the group's order
    assert scores.examples["pick_group/acc"] == (
        scores.examples["pick_a/acc"] + scores.examples["pick_b/acc"]
    )
    # its standard error: lm-eval's own pooled formula over the subtasks
    assert scores.task_stderr["pick_group/acc"] == pytest.approx(group["acc_stderr,none"])
    assert scores.stderr["g"] == scores.task_stderr["pick_group/acc"]


def test_nested_group_and_a_metric_of_the_group(model_tok, suite):
    model, tok = model_tok
    objective = _objective("n", "pick_nested", metric="acc")
    scores = build_evaluator([objective], _spec(suite), model, tok).evaluate(model, tok)
    ref = _simple(model, tok, suite, ["pick_nested"])
    assert scores.tasks["pick_nested/acc"] == pytest.approx(
        ref["groups"]["pick_nested"]["acc,none"]
    )
    assert len(scores.examples["pick_nested/acc"]) == 8 + 4 + 5
    assert {"pick_a/acc", "pick_b/acc", "pick_c/acc"} <= set(scores.tasks)


def test_an_objective_mixes_a_group_a_tag_and_a_task(model_tok, suite):
    model, tok = model_tok
    objective = ObjectiveSpec(
        name="mix",
        tasks=(
            TaskRef(task="pick_group", weight=2.0),
            TaskRef(task="pick_c"),
            TaskRef(task="pick_tag", metric="acc_norm"),  # a tag: each of its tasks a term
        ),
    )
    scores = build_evaluator([objective], _spec(suite), model, tok).evaluate(model, tok)
    t = scores.tasks
    expected = (
        2 * t["pick_group/acc"] + t["pick_c/acc"] + t["pick_a/acc_norm"] + t["pick_b/acc_norm"]
    ) / 5
    assert scores.objectives["mix"] == pytest.approx(expected)
    se = scores.task_stderr
    terms = [
        (2, se["pick_group/acc"]),
        (1, se["pick_c/acc"]),
        (1, se["pick_a/acc_norm"]),
        (1, se["pick_b/acc_norm"]),
    ]
    assert scores.stderr["mix"] == pytest.approx(
        math.sqrt(sum((w / 5) ** 2 * s**2 for w, s in terms))
    )


def test_a_group_with_an_unknown_task_is_one_line(model_tok, suite):
    model, tok = model_tok
    with pytest.raises(
        UserError, match=r"objective 'x': group 'bad_group' .* unknown lm-eval task 'pick_zz'"
    ):
        build_evaluator([_objective("x", "bad_group")], _spec(suite), model, tok)


# ------------------------------------------------------------------------ per-example values


def test_per_example_values_average_to_the_means_and_match_lm_evals_samples(model_tok, suite):
    model, tok = model_tok
    objectives = [_objective("p", "pick_a", "pick_b"), _objective("l", "like_c", metric="acc")]
    scores = build_evaluator(objectives, _spec(suite, limit=6), model, tok).evaluate(model, tok)
    ref = _simple(model, tok, suite, ["pick_a", "pick_b", "like_c"], limit=6, log_samples=True)
    for task, metric in (("pick_a", "acc"), ("pick_b", "acc"), ("like_c", "acc")):
        values = scores.examples[f"{task}/{metric}"]
        assert list(values) == [float(v) for v in _logged(ref, task, metric)]
        assert len(values) == min(6, ref["n-samples"][task]["original"])
        assert sum(values) / len(values) == pytest.approx(scores.tasks[f"{task}/{metric}"])
        assert scores.task_stderr[f"{task}/{metric}"] == pytest.approx(mean_stderr(values))
    # the objective's standard error from its two tasks (equal weights)
    a, b = scores.task_stderr["pick_a/acc"], scores.task_stderr["pick_b/acc"]
    assert scores.stderr["p"] == pytest.approx(math.sqrt(a**2 + b**2) / 2)


def test_docs_restrict_a_call_to_some_examples(model_tok, suite):
    model, tok = model_tok
    ev = build_evaluator([_objective("p", "pick_a", "pick_b")], _spec(suite), model, tok)
    full = ev.evaluate(model, tok)
    part = ev.evaluate(model, tok, docs={"pick_a": [6, 1, 3]})
    expected = tuple(full.examples["pick_a/acc"][i] for i in (1, 3, 6))
    assert part.examples["pick_a/acc"] == expected
    assert part.tasks["pick_a/acc"] == pytest.approx(sum(expected) / 3)
    assert part.examples["pick_b/acc"] == full.examples["pick_b/acc"]  # not named: all of it
    ref = _simple(model, tok, suite, ["pick_a"], samples={"pick_a": [1, 3, 6]})
    assert part.tasks["pick_a/acc"] == pytest.approx(ref["results"]["pick_a"]["acc,none"])
    assert ev.examples_per_task() == {"pick_a": 8, "pick_b": 4}
    with pytest.raises(ValueError, match="docs"):
        ev.evaluate(model, tok, docs={"pick_zz": [0]})
    with pytest.raises(ValueError, match=r"docs\['pick_b'\]: expected indices in \[0, 3\]"):
        ev.evaluate(model, tok, docs={"pick_b": [4]})


def test_perplexity_metrics_have_per_example_values_and_standard_errors(model_tok, suite):
    model, tok = model_tok
    objective = _objective("l", "like_c", metric="perplexity")
    scores = build_evaluator([objective], _spec(suite), model, tok).evaluate(model, tok)
    ref = _simple(model, tok, suite, ["like_c"], log_samples=True)
    lls = _logged(ref, "like_c", "perplexity")
    assert scores.tasks["like_c/perplexity"] == pytest.approx(
        ref["results"]["like_c"]["perplexity,none"]
    )
    assert scores.examples["like_c/perplexity"] == pytest.approx([math.exp(-ll) for ll in lls])
    mean_ll = sum(lls) / len(lls)
    assert scores.stderr["l"] == pytest.approx(math.exp(-mean_ll) * mean_stderr(lls))


# ---------------------------------------------------------------------------- chat templates


def test_chat_template_scores_equal_simple_evaluates_and_differ_from_plain(model_tok, suite):
    model, tok = model_tok
    assert tok.chat_template  # the demo pool's tokenizer carries one
    objective = _objective("l", "like_c", metric="perplexity")
    chat_spec = _spec(suite, apply_chat_template=True, system_instruction=SYSTEM)
    chat = build_evaluator([objective], chat_spec, model, tok).evaluate(model, tok)
    plain = build_evaluator([objective], _spec(suite), model, tok).evaluate(model, tok)
    ref = _simple(
        model,
        tok,
        suite,
        ["like_c"],
        apply_chat_template=True,
        system_instruction=SYSTEM,
        log_samples=True,
    )
    assert chat.tasks["like_c/perplexity"] == pytest.approx(
        ref["results"]["like_c"]["perplexity,none"], rel=1e-9
    )
    assert chat.tasks["like_c/perplexity"] != pytest.approx(plain.tasks["like_c/perplexity"])
    prompt = sorted(ref["samples"]["like_c"], key=lambda s: s["doc_id"])[0]["arguments"][0][0]
    assert prompt.startswith(SYSTEM) and "Q: " in prompt  # the template did the formatting


def test_a_template_name_picks_one_of_the_tokenizers_named_templates(model_tok, suite):
    model, tok = model_tok
    named = copy.deepcopy(tok)
    terse = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    named.chat_template = {"default": tok.chat_template, "terse": terse}
    objective = _objective("l", "like_c", metric="perplexity")
    by_name = build_evaluator([objective], _spec(suite, apply_chat_template="terse"), model, named)
    default = build_evaluator([objective], _spec(suite, apply_chat_template=True), model, named)
    value = by_name.evaluate(model, named).tasks["like_c/perplexity"]
    assert value != pytest.approx(default.evaluate(model, named).tasks["like_c/perplexity"])
    with pytest.raises(UserError, match="eval.apply_chat_template 'nope'"):
        build_evaluator([objective], _spec(suite, apply_chat_template="nope"), model, named)


def test_a_chat_template_on_a_tokenizer_without_one_names_the_checkpoint(
    model_tok, suite, demo_zoo
):
    model, tok = model_tok
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    objective = _objective("l", "like_c")
    with pytest.raises(
        UserError, match=rf"^{demo_zoo.base}: eval.apply_chat_template .* no chat template"
    ):
        build_evaluator([objective], _spec(suite, apply_chat_template=True), model, bare)


def test_fewshot_as_multiturn_needs_a_chat_template(suite):
    with pytest.raises(ValueError, match="fewshot_as_multiturn: true needs apply_chat_template"):
        _spec(suite, fewshot_as_multiturn=True)
    assert _spec(suite, apply_chat_template=True).multiturn is True  # lm-eval's default
    assert _spec(suite).multiturn is False


# ------------------------------------------------------------------------ tasks running code


def test_an_unsafe_task_needs_consent_then_runs_the_models_program(model_tok, suite):
    model, tok = model_tok
    objective = _objective("code", "run_code")
    with pytest.raises(
        UserError, match=r"task 'run_code' runs code the model writes .*confirm_run_unsafe_code"
    ):
        build_evaluator([objective], _spec(suite), model, tok)
    ev = build_evaluator([objective], _spec(suite, confirm_run_unsafe_code=True), model, tok)
    scores = ev.evaluate(model, tok)
    values = scores.examples["run_code/pass"]
    # the first three prompts end in a comment: any completion runs and prints the answer
    assert values[:3] == (1.0, 1.0, 1.0)
    assert scores.tasks["run_code/pass"] == pytest.approx(sum(values) / 4)


# ----------------------------------------------------------------- generation and context


def test_gen_kwargs_per_task_reach_lm_eval(model_tok, suite, demo_tasks_path):
    model, tok = model_tok
    spec = EvalSpec(tasks_path=demo_tasks_path, limit=3, batch_size=4)
    objective = _objective("c", "demo_code", gen_kwargs={"max_gen_toks": 1, "until": ["?"]})
    ev = build_evaluator([objective], spec, model, tok)
    out = ev.run_tasks()
    settings = out["samples"]["demo_code"][0]["arguments"][0][1]
    assert settings["max_gen_toks"] == 1 and settings["until"] == ["?"]
    assert all(len(s["resps"][0][0]) <= 1 for s in out["samples"]["demo_code"])
    clash = [objective, _objective("d", "demo_code", gen_kwargs={"max_gen_toks": 2})]
    with pytest.raises(UserError, match="'demo_code' is used elsewhere with another"):
        build_evaluator(clash, spec, model, tok)
    with pytest.raises(UserError, match="gen_kwargs apply to generate_until tasks"):
        build_evaluator(
            [_objective("p", "pick_a", gen_kwargs={"max_gen_toks": 1})], _spec(suite), model, tok
        )


def test_max_length_sets_the_harness_context(model_tok, suite):
    model, tok = model_tok
    ev = build_evaluator([_objective("l", "like_c")], _spec(suite, max_length=8), model, tok)
    assert ev.lm.max_length == 8
    short = ev.evaluate(model, tok).tasks["like_c/perplexity"]
    full = build_evaluator([_objective("l", "like_c")], _spec(suite), model, tok).evaluate(
        model, tok
    )
    assert short != pytest.approx(full.tasks["like_c/perplexity"])  # contexts were cut


# ------------------------------------------------------------------- Hugging Face datasets


def _cache_as_hub_dataset(cache, repo, rows):
    """Put ``rows`` into a datasets cache as if ``repo`` had been downloaded once (offline)."""
    import glob
    import json
    import os
    import shutil

    import datasets

    source = cache / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.load_dataset("json", data_files={"test": str(source)}, cache_dir=str(cache))
    built = glob.glob(str(cache / "json" / "*" / "*" / "*"))[0]
    version, digest = built.split(os.sep)[-2:]
    org, name = repo.split("/")
    target = cache / f"{org}___{name}" / "default" / version / digest
    target.parent.mkdir(parents=True)
    shutil.move(built, target)
    for f in target.glob("json-*.arrow"):
        f.rename(target / f"{name}-{f.name[len('json-') :]}")


def test_a_hub_dataset_is_used_from_the_local_cache_and_refused_when_absent(
    model_tok, tmp_path, monkeypatch
):
    import datasets
    import yaml

    model, tok = model_tok
    cache = tmp_path / "hf-datasets"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for repo in ("merge-search/cached_picks", "merge-search/absent_picks"):
        name = repo.split("/")[1]
        task = choice_task(name, Path("unused"), dataset_path=repo)
        del task["dataset_kwargs"]  # a hub dataset: from the local datasets cache only
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump(task))
    rows = [{"question": "ab+c=", "choices": ["abc", "cab"], "answer": 0}] * 3
    _cache_as_hub_dataset(cache, "merge-search/cached_picks", rows)
    spec = EvalSpec(tasks_path=tasks, batch_size=4)
    ok = build_evaluator([_objective("c", "cached_picks")], spec, model, tok)
    assert ok.examples_per_task() == {"cached_picks": 3}
    assert len(ok.evaluate(model, tok).examples["cached_picks/acc"]) == 3
    message = (
        r"objective 'a': task 'absent_picks' needs the Hugging Face dataset "
        r"'merge-search/absent_picks', which is not in the local datasets cache"
    )
    with pytest.raises(UserError, match=message):
        build_evaluator([_objective("a", "absent_picks")], spec, model, tok)
