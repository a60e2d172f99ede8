"""The perplexity evaluator on real tiny models."""

from __future__ import annotations

import json
import math

import pytest

from evaluators import EvalSpec, ObjectiveSpec
from evaluators.perplexity import PerplexityEvaluator, token_windows
from search.errors import UserError
from tests.evaluators.eval_fixtures import TEXTS, copy_weights_in_place, load


@pytest.fixture(scope="module")
def model_tok(demo_zoo):
    return load(demo_zoo.base)


def _objective(path, name="ppl"):
    return ObjectiveSpec(name=name, evaluator="perplexity", direction="minimize", data=path)


def test_value_is_exp_of_the_models_mean_token_loss(model_tok, tmp_path):
    import torch

    model, tok = model_tok
    (tmp_path / "one.txt").write_text(TEXTS[0] + "\n")
    ev = PerplexityEvaluator([_objective(tmp_path / "one.txt")], EvalSpec(), model, tok)
    scores = ev.evaluate(model, tok)
    ids = torch.tensor([tok(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        expected = math.exp(float(model(input_ids=ids, labels=ids).loss))
    assert scores.objectives["ppl"] == pytest.approx(expected, rel=1e-5)
    assert scores.tasks == {"one.txt/perplexity": scores.objectives["ppl"]}


def test_txt_and_jsonl_agree_and_batching_does_not_matter(model_tok, tmp_path):
    model, tok = model_tok
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n\n")
    records = [json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)]
    (tmp_path / "t.jsonl").write_text("".join(records))
    txt = PerplexityEvaluator([_objective(tmp_path / "t.txt")], EvalSpec(batch_size=1), model, tok)
    jsonl = PerplexityEvaluator(
        [_objective(tmp_path / "t.jsonl")], EvalSpec(batch_size=4), model, tok
    )
    a, b = txt.evaluate(model, tok), jsonl.evaluate(model, tok)
    assert a.objectives["ppl"] == pytest.approx(b.objectives["ppl"], rel=1e-5)
    per_text = a.examples["t.txt/perplexity"]
    assert per_text == pytest.approx(b.examples["t.jsonl/perplexity"], rel=1e-5)
    # every text (the blank lines are not texts), pooled: strictly inside the per-text range
    assert len(per_text) == len(TEXTS)
    assert min(per_text) < a.objectives["ppl"] < max(per_text)


def test_follows_in_place_weight_changes(model_tok, demo_zoo, tmp_path):
    model, tok = model_tok
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    ev = PerplexityEvaluator([_objective(tmp_path / "t.txt")], EvalSpec(), model, tok)
    copy_weights_in_place(model, demo_zoo.base)
    base = ev.evaluate(model, tok).objectives["ppl"]
    copy_weights_in_place(model, demo_zoo.checkpoints[0])
    other = ev.evaluate(model, tok).objectives["ppl"]
    copy_weights_in_place(model, demo_zoo.base)
    assert other != pytest.approx(base)
    assert ev.evaluate(model, tok).objectives["ppl"] == base


def test_limit_caps_the_number_of_texts(model_tok, tmp_path):
    model, tok = model_tok
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    (tmp_path / "first.txt").write_text(TEXTS[0])
    capped = PerplexityEvaluator([_objective(tmp_path / "t.txt")], EvalSpec(limit=1), model, tok)
    first = PerplexityEvaluator([_objective(tmp_path / "first.txt")], EvalSpec(), model, tok)
    assert capped.evaluate(model, tok).objectives == first.evaluate(model, tok).objectives


def test_long_texts_are_cut_into_context_windows():
    assert token_windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # a 1-token tail predicts nothing
    assert token_windows(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "does not exist"),
        ("data.csv", "a,b\n", "expected a .txt or .jsonl file"),
        ("bad.jsonl", '{"text": "ok"}\n{not json\n', r"bad.jsonl:2: not valid JSON"),
        ("field.jsonl", '{"body": "x"}\n', r"field.jsonl:1: expected an object with a string"),
        ("empty.txt", "\n  \n", "has no texts"),
    ],
)
def test_bad_data_files_are_user_errors(model_tok, tmp_path, name, content, message):
    model, tok = model_tok
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=rf"objective 'ppl': .*{message}"):
        PerplexityEvaluator([_objective(tmp_path / name)], EvalSpec(), model, tok)


def test_nan_weights_are_a_user_error(demo_zoo, tmp_path):
    import torch

    model, tok = load(demo_zoo.base)
    (tmp_path / "t.txt").write_text(TEXTS[0])
    ev = PerplexityEvaluator([_objective(tmp_path / "t.txt")], EvalSpec(), model, tok)
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    with pytest.raises(UserError, match="perplexity of 't.txt/perplexity' is NaN"):
        ev.evaluate(model, tok)


def test_per_text_values_standard_error_and_docs(model_tok, tmp_path):
    import torch

    from evaluators.stats import ratio_stderr

    model, tok = model_tok
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    ev = PerplexityEvaluator([_objective(tmp_path / "t.txt")], EvalSpec(batch_size=4), model, tok)
    assert ev.examples_per_task() == {"t.txt": len(TEXTS)}
    scores = ev.evaluate(model, tok)
    nll, count = [], []
    for text in TEXTS:  # each text alone, summed token losses
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=ids).loss)
        nll.append(loss * (ids.shape[1] - 1))
        count.append(ids.shape[1] - 1)
    assert scores.examples["t.txt/perplexity"] == pytest.approx(
        [math.exp(a / b) for a, b in zip(nll, count, strict=True)], rel=1e-5
    )
    value = math.exp(sum(nll) / sum(count))
    assert scores.objectives["ppl"] == pytest.approx(value, rel=1e-5)
    assert scores.stderr["ppl"] == pytest.approx(value * ratio_stderr(nll, count), rel=1e-4)
    part = ev.evaluate(model, tok, docs={"t.txt": [4, 1]})
    assert part.examples["t.txt/perplexity"] == pytest.approx(
        [scores.examples["t.txt/perplexity"][i] for i in (1, 4)], rel=1e-5
    )
    assert part.objectives["ppl"] == pytest.approx(
        math.exp((nll[1] + nll[4]) / (count[1] + count[4])), rel=1e-5
    )
    with pytest.raises(ValueError, match="docs"):
        ev.evaluate(model, tok, docs={"other.txt": [0]})


def test_max_length_cuts_the_windows(model_tok, tmp_path):
    model, tok = model_tok
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    short = PerplexityEvaluator(
        [_objective(tmp_path / "t.txt")], EvalSpec(max_length=4), model, tok
    )
    assert max(len(w) for _, w in short._windows["ppl"]) == 4
    assert len(short.evaluate(model, tok).examples["t.txt/perplexity"]) == len(TEXTS)
