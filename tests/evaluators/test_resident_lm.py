"""ResidentHFLM answers every request as lm-eval's own HFLM does (real harness, real model)."""

from __future__ import annotations

import pytest

from tests.evaluators.eval_fixtures import copy_weights_in_place, load, write_task_folder

TASKS = ["demo_code", "demo_instruct", "tiny_ppl"]  # generate_until and loglikelihood_rolling


@pytest.fixture(scope="module")
def task_dict(tmp_path_factory, demo_tasks_path):
    from evaluators.lm_tasks import load_tasks

    folder = write_task_folder(tmp_path_factory.mktemp("tasks") / "tasks", demo_tasks_path)
    return load_tasks(TASKS, folder).task_dict()


def _responses(lm, task_dict) -> dict[str, list]:
    """Every request's raw response, per task in document order."""
    from lm_eval.evaluator import evaluate

    out = evaluate(lm=lm, task_dict=task_dict, limit=12, bootstrap_iters=0, log_samples=True)
    return {
        name: [(s["doc_id"], s["resps"]) for s in sorted(samples, key=lambda s: s["doc_id"])]
        for name, samples in out["samples"].items()
    }


def test_same_responses_as_hflm_across_calls_and_weight_swaps(demo_zoo, task_dict):
    from lm_eval.models.huggingface import HFLM

    from evaluators.resident_lm import ResidentHFLM

    model, tokenizer = load(demo_zoo.base)
    plain = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=5)
    resident = ResidentHFLM(pretrained=model, tokenizer=tokenizer, batch_size=5)

    first = _responses(resident, task_dict)
    assert first == _responses(plain, task_dict)
    memo = (len(resident._ids), len(resident._batches))
    # the memo holds what was asked: every request's text tokenized, and the batches of the
    # generation requests (the only ones lm-eval pads through tok_batch_encode)
    tasks = task_dict["tasks"]
    asked = {n: {i.arguments[0] for i in task.instances} for n, task in tasks.items()}
    assert set().union(*asked.values()) <= {key[0] for key in resident._ids}
    batched = {text for key in resident._batches for text in key[0]}
    assert batched == asked["demo_code"] | asked["demo_instruct"]
    assert _responses(resident, task_dict) == first  # answered from the memo
    assert (len(resident._ids), len(resident._batches)) == memo

    copy_weights_in_place(model, demo_zoo.checkpoints[-1])
    swapped = _responses(resident, task_dict)
    assert swapped == _responses(plain, task_dict)
    assert swapped["tiny_ppl"] != first["tiny_ppl"]  # the new weights were used, not old answers


def test_memoized_ids_are_copies_callers_can_change(demo_zoo):
    from evaluators.resident_lm import ResidentHFLM

    model, tokenizer = load(demo_zoo.base)
    lm = ResidentHFLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    ids = lm.tok_encode("reverse: stone?")
    ids.append(-1)
    assert lm.tok_encode("reverse: stone?") == tokenizer("reverse: stone?")["input_ids"]
    batch, mask = lm.tok_batch_encode(["a=1;print(a)?", "upper: ab?"])
    batch.fill_(0)
    again, _ = lm.tok_batch_encode(["a=1;print(a)?", "upper: ab?"])
    assert int(again.abs().sum()) > 0 and mask.shape == again.shape
