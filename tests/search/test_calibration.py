"""Proxy and calibration examples: read with lm-eval's own task objects, or from local files."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluators.lm_tasks import load_tasks
from evaluators.spec import EvalSpec, ObjectiveSpec
from search.calibration import (
    IGNORE,
    ProxyExample,
    batches,
    examples_sha256,
    interleave,
    objective_proxies,
    read_examples,
    task_examples,
)
from search.calibration import tokenize as tokenize_examples
from search.errors import UserError
from tests.toy_tasks import TOY_CHOICES, write_choice_task

CHOICES = TOY_CHOICES[3:6]  # gold answers 1, 2, 0


@pytest.fixture(scope="module")
def mc_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mc")
    return write_choice_task(folder, "pick3", CHOICES, description="Pick one.\n")


def test_multiple_choice_examples_are_lm_evals_gold_requests(mc_tasks: Path) -> None:
    task = load_tasks(["pick3"], mc_tasks).tasks["pick3"].task
    examples = task_examples(task, None, seed=0)
    assert len(examples) == len(CHOICES)
    requests = {}
    for inst in _instances(task):
        requests.setdefault(inst.doc_id, []).append(inst.arguments)
    for doc_id, (ex, (_, _, gold)) in enumerate(zip(examples, CHOICES, strict=True)):
        assert (ex.prompt, ex.target) == requests[doc_id][gold]  # lm-eval's gold continuation
        assert ex.prompt.startswith("Pick one.")  # the task description is part of the context


def _instances(task):
    """lm-eval's own zero-shot requests, (context, continuation) per choice."""
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return task.instances


def test_generation_examples_are_the_prompt_and_the_gold_answer(demo_tasks_path: Path) -> None:
    task = load_tasks(["demo_code"], demo_tasks_path).tasks["demo_code"].task
    docs = list(task.eval_docs)
    picked = task_examples(task, 5, seed=3)
    assert len(picked) == 5
    again = task_examples(task, 5, seed=3)
    assert picked == again and task_examples(task, 5, seed=4) != picked
    by_prompt = {d["prompt"]: d["answer"] for d in docs}
    for ex in picked:
        assert by_prompt[ex.prompt] == ex.target
    assert [d["prompt"] for d in docs if d["prompt"] in {e.prompt for e in picked}] == [
        e.prompt for e in picked
    ]  # kept in split order


def test_objective_proxies_weigh_tasks_and_read_perplexity_texts(
    mc_tasks: Path, tmp_path: Path
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("one.\ntwo.\nthree.\n")
    objectives = [
        ObjectiveSpec(name="mc", tasks=[{"task": "pick3", "weight": 3.0}]),
        ObjectiveSpec(name="ppl", evaluator="perplexity", direction="minimize", data=text),
    ]
    proxies = objective_proxies(objectives, EvalSpec(tasks_path=mc_tasks), per_task=2, seed=0)
    assert [p.name for p in proxies] == ["mc", "ppl"]
    assert proxies[0].parts[0].weight == 1.0 and len(proxies[0].parts[0].examples) == 2
    assert proxies[1].parts[0].examples == (ProxyExample("", "one."), ProxyExample("", "two."))
    mixed = interleave(proxies, 3)
    assert mixed[1] == ProxyExample("", "one.") and len(mixed) == 3


def test_read_examples_accepts_text_and_prompt_target_records(tmp_path: Path) -> None:
    file = tmp_path / "c.jsonl"
    file.write_text('{"text": "abc"}\n\n{"prompt": "1+1=", "target": "2"}\n')
    examples = read_examples(file, "merge.fisher.data")
    assert examples == [ProxyExample("", "abc"), ProxyExample("1+1=", "2")]
    assert [read_examples(file, "x")[i].to_json() for i in (0, 1)] == [
        {"text": "abc"},
        {"prompt": "1+1=", "target": "2"},
    ]
    assert examples_sha256(examples) != examples_sha256(examples[:1])


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.jsonl", '{"body": "x"}\n', "a.jsonl:1: expected an object with a string 'text'"),
        ("a.txt", "  \n", "has no examples"),
        ("a.csv", "x\n", "expected a .txt or .jsonl file"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, name: str, content: str, expected: str):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match="merge.fisher.data") as info:
        read_examples(tmp_path / name, "merge.fisher.data")
    assert expected in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        read_examples(tmp_path / "missing.txt", "merge.fisher.data")


def test_tokens_score_the_target_only(demo_zoo) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_zoo.base))
    pairs = tokenize_examples(
        [ProxyExample("a=1;print(a)? ", "1"), ProxyExample("", "hi")], tok, 64
    )
    (ids, labels), (text_ids, text_labels) = pairs
    scored = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert tok.decode(scored) == " 1"  # the prompt's trailing space goes with the target
    assert text_labels[1:] == text_ids[1:]  # a plain text: every token after the first
    assert tokenize_examples([ProxyExample("x", "")], tok, 64) == []  # nothing to score
    long = tokenize_examples([ProxyExample("p" * 100, "q")], tok, 16)[0]
    assert len(long[0]) == 16 and long[1][-1] != IGNORE  # truncated from the left
    ids_b, mask_b, labels_b = batches(pairs, 2, 0)[0]
    assert ids_b.shape == mask_b.shape == labels_b.shape
    assert int(mask_b.sum()) == len(ids) + len(text_ids)
    assert (labels_b[mask_b == 0] == IGNORE).all()
