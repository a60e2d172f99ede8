"""``eval.backend: vllm`` against ``hf``: one resident model, the same weights, the same scores.

One vLLM engine per evaluator (in this process), each built once; between calls the resident
model's weights change in place (a merge materialized by the engine, checkpoints copied in) and
the vLLM evaluator must score what the model holds now. Real vLLM (CPU build), real lm-eval,
the tiny demo pool.
"""

from __future__ import annotations

import math

import pytest

from evaluators import EvalSpec, ObjectiveSpec, TaskRef, build_evaluator
from evaluators.spec import VllmSpec
from search.engine.model import load_model
from tests.evaluators.eval_fixtures import copy_weights_in_place, write_suite_folder

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("vllm_available")]

LIMIT = 40  # examples per demo task
# small engines: a quarter GiB of KV cache each; eager (no compilation at start-up)
ENGINE = VllmSpec(cpu_kv_cache_gib=0.25, enforce_eager=True)
SYSTEM = "Answer in one word."


def _pair(spec: EvalSpec, objectives, model, tok):
    """The hf and the vllm evaluator of ``objectives`` on the same resident model."""
    hf = build_evaluator(objectives, spec, model, tok)
    vllm_spec = spec.model_copy(update={"backend": "vllm", "vllm": ENGINE})
    return hf, build_evaluator(objectives, vllm_spec, model, tok)


@pytest.fixture(scope="module")
def pool(vllm_zoo):
    """The demo pool, read, with its resident model (the one both back ends score)."""
    from search.engine.pool import CheckpointPool

    pool = CheckpointPool.open(
        list(vllm_zoo.checkpoints), vllm_zoo.base, device="cpu", dtype="float32"
    )
    pool.load()
    model, tok = load_model(pool)
    return pool, model, tok


@pytest.fixture(scope="module")
def generate_pair(pool, vllm_zoo):
    _, model, tok = pool
    objectives = [
        ObjectiveSpec(name="instruct", tasks=(TaskRef(task="demo_instruct"),)),
        ObjectiveSpec(name="code", tasks=(TaskRef(task="demo_code"),)),
    ]
    spec = EvalSpec(tasks_path=vllm_zoo.tasks_path, limit=LIMIT, batch_size=16)
    return _pair(spec, objectives, model, tok)


def _states(pool, vllm_zoo):
    """Weight states written into the resident model in place: merges and checkpoints."""
    from search.engine.materialize import materialize
    from search.engine.plan import MergePlan

    _, model, _ = pool
    k = len(vllm_zoo.checkpoints)
    plans = {
        "uniform": MergePlan.create("linear", [1.0] * k),
        "code_heavy": MergePlan.create("linear", [3.0, 2.0, 1.0] + [0.2] * (k - 3)),
    }
    for name, plan in plans.items():
        materialize(plan, pool[0], model)
        yield name
    for folder in (vllm_zoo.checkpoints[0], vllm_zoo.checkpoints[-1]):
        copy_weights_in_place(model, folder)
        yield folder.name


def test_greedy_generation_scores_equal_hf_after_every_weight_change(pool, generate_pair, vllm_zoo):
    _, model, tok = pool
    hf, vllm = generate_pair
    seen = []
    for state in _states(pool, vllm_zoo):
        want = hf.evaluate(model, tok)
        got = vllm.evaluate(model, tok)
        assert got.tasks == want.tasks, state
        assert got.objectives == want.objectives, state
        assert got.examples == want.examples, state  # per example, in document order
        assert got.task_stderr == pytest.approx(want.task_stderr, nan_ok=True), state
        assert got.stderr == pytest.approx(want.stderr, nan_ok=True), state
        texts = _generations(hf.run_tasks())
        assert _generations(vllm.run_tasks()) == texts, state  # the generated strings
        seen.append(texts)
    # the states generate differently, so equal outputs mean each reload reached the engine
    assert len(set(seen)) == len(seen)


def _generations(out) -> tuple[str, ...]:
    """Every generated string, by task and document."""
    return tuple(
        s["resps"][0][0]
        for task in sorted(out["samples"])
        for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])
    )


def test_staged_calls_on_some_documents_equal_hf(pool, generate_pair, vllm_zoo):
    from search.engine.materialize import materialize
    from search.engine.plan import MergePlan

    _, model, tok = pool
    hf, vllm = generate_pair
    k = len(vllm_zoo.checkpoints)
    materialize(MergePlan.create("linear", [1.0] + [0.5] * (k - 1)), pool[0], model)
    docs = {"demo_code": [1, 5, 9, 30], "demo_instruct": [0, 2, 3]}
    want, got = hf.evaluate(model, tok, docs), vllm.evaluate(model, tok, docs)
    assert got.examples == want.examples
    assert len(got.examples["demo_instruct/exact_match"]) == 3
    assert vllm.combine(got.examples).objectives == hf.combine(want.examples).objectives


def test_gen_kwargs_reach_the_engine(pool, vllm_zoo):
    _, model, tok = pool
    short = [
        ObjectiveSpec(
            name="code",
            tasks=(TaskRef(task="demo_code", gen_kwargs={"max_gen_toks": 1}),),
        )
    ]
    spec = EvalSpec(tasks_path=vllm_zoo.tasks_path, limit=LIMIT, batch_size=16)
    hf, vllm = _pair(spec, short, model, tok)
    copy_weights_in_place(model, vllm_zoo.checkpoints[0])
    want = hf.run_tasks()["samples"]["demo_code"]
    got = vllm.run_tasks()["samples"]["demo_code"]
    assert [s["resps"] for s in got] == [s["resps"] for s in want]
    assert all(len(s["resps"][0][0]) <= 1 for s in got)  # one character token at most


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_suite_folder(tmp_path_factory.mktemp("suite") / "tasks")


def _loglikelihoods(out, task):
    """Every (log-likelihood, is_greedy) lm-eval logged for ``task``, in document order."""
    rows = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return [tuple(r) for s in rows for resp in s["resps"] for r in resp]


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
def test_multiple_choice_and_loglikelihoods_equal_hf(pool, suite, vllm_zoo, chat):
    _, model, tok = pool
    objectives = [
        ObjectiveSpec(name="pick", tasks=(TaskRef(task="pick_group", metric="acc"),)),
        ObjectiveSpec(name="like", tasks=(TaskRef(task="like_c", metric="acc"),)),
    ]
    settings = {"apply_chat_template": True, "system_instruction": SYSTEM} if chat else {}
    spec = EvalSpec(tasks_path=suite, batch_size=4, **settings)
    hf, vllm = _pair(spec, objectives, model, tok)
    for folder in (vllm_zoo.checkpoints[1], vllm_zoo.base):
        copy_weights_in_place(model, folder)
        want, got = hf.evaluate(model, tok), vllm.evaluate(model, tok)
        assert got.tasks.keys() == want.tasks.keys()
        for key in want.tasks:
            if key.endswith("/acc") or key.endswith("/acc_norm"):
                assert got.tasks[key] == want.tasks[key], key
            else:  # perplexity: exp of a mean log-likelihood
                assert got.tasks[key] == pytest.approx(want.tasks[key], rel=1e-4), key
        assert got.examples == want.examples
        for task in ("pick_a", "pick_b", "like_c"):
            wl = _loglikelihoods(hf.run_tasks(), task)
            gl = _loglikelihoods(vllm.run_tasks(), task)
            assert [g for _, g in gl] == [g for _, g in wl], task
            for (a, _), (b, _) in zip(gl, wl, strict=True):
                assert math.isfinite(a) and a == pytest.approx(b, abs=1e-4), task
