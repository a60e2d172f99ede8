"""bench/real_model.py's own pieces: its committed tasks, its data splits and the top-block
fine-tune's loss (the full run needs the GGUF model and minutes: bench/README.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_model():
    spec = importlib.util.spec_from_file_location("real_model", REPO / "bench/real_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tasks_match_a_regeneration(real_model, tmp_path):
    written = real_model.write_tasks(tmp_path)
    committed = REPO / "configs/tasks/real"
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in written)
    for path in written:
        assert (committed / path.name).read_text() == path.read_text(), path.name


def test_splits_are_disjoint_valid_and_training_never_sees_them(real_model):
    for skill in real_model.SKILLS:
        splits = real_model.split_rows(skill)
        prompts = [{r["prompt"] for r in rows} for rows in splits.values()]
        assert [len(p) for p in prompts] == [n for _, n in real_model.SPLITS.values()]
        assert sum(map(len, prompts)) == len(set().union(*prompts))
        for rows in splits.values():
            assert all(0 <= r["gold"] < len(r["choices"]) for r in rows)
        golds = [r["gold"] for r in splits["_test"]]
        assert max(golds.count(g) for g in set(golds)) < 0.6 * len(golds)  # no lopsided answer
        reserved = {
            r["prompt"]
            for v in real_model.split_rows(skill, real_model.RESERVED).values()
            for r in v
        }
        assert set().union(*prompts) <= reserved  # the splits may grow up to RESERVED
        training = real_model.training_rows(skill, 200, seed=0)
        assert not {p for p, _ in training} & reserved


def test_the_top_blocks_loss_is_the_full_models_and_trains_only_them(real_model):
    import torch
    from transformers import LlamaForCausalLM

    from search.zoo.model import llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(32, 4, 2, 64)).eval()
    x = torch.randint(3, 60, (3, 12))
    y = torch.full_like(x, -100)
    y[0, 5:9] = x[0, 5:9]  # labels on an answer span; rows 1 and 2 end early (right padding)
    y[1, 3:6] = x[1, 3:6]
    y[2, 8:12] = x[2, 8:12]
    top = 2
    with torch.no_grad():
        full = model(input_ids=x, labels=y).loss
        cached = model.model(input_ids=x, output_hidden_states=True).hidden_states[4 - top]
    blocks = real_model.TopBlocks(model, top)
    loss = blocks(input_ids=cached, labels=y).loss
    assert torch.allclose(loss, full, atol=1e-5)
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all(n.startswith(("model.layers.2.", "model.layers.3.")) for n in trained)
    assert {id(p) for p in blocks.parameters()} == {
        id(p) for n, p in model.named_parameters() if n in trained
    }


def test_the_study_config_moves_every_path_under_the_output(real_model, tmp_path):
    from search.study.config import load_config

    for name in ("base", *real_model.SKILLS):
        (tmp_path / "pool" / name).mkdir(parents=True)  # load_config checks that they exist
    path = real_model.study_config(tmp_path, "vllm", n_trials=3, threads=1)
    cfg = load_config(path)
    assert cfg.eval.backend == "vllm" and cfg.budget.n_trials == 3
    assert all(p.is_relative_to(tmp_path / "pool") for p in (*cfg.checkpoints, cfg.base_model))
    assert cfg.storage == f"sqlite:///{tmp_path / 'real-vllm.db'}"
    assert (
        set(cfg.eval.test)
        == set(cfg.eval.heldout)
        == {t.task for o in cfg.objectives for t in o.tasks}
    )
