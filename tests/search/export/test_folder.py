"""export_merge: loadable HF folder, same logits, sharding, card, mergekit YAML, safe replace."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from search.engine.materialize import materialize, merged_tensors
from search.engine.model import load_model
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.engine.registry import METHODS
from search.errors import UserError
from search.export.folder import export_merge
from tests.checkpoint_files import read_tensors

IDS = torch.tensor([[1, 4, 5, 6, 7, 8, 2]])


@pytest.fixture(scope="module")
def pool(tiny_zoo):
    return CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base)


def test_export_reloads_with_the_same_logits_as_the_in_memory_merge(pool, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plan = MergePlan.create("ties", [[0.6, 0.2], [0.3, 0.5], [0.4, 0.4]], {"density": 0.4}, seed=1)
    out = export_merge(plan, pool, tmp_path / "merged", max_shard_size=60_000)
    resident, _ = load_model(pool, tokenizer=False)
    materialize(plan, pool, resident)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, resident(IDS).logits)
    # sharded with an index, every shard within the limit but for single oversized tensors
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert set(index["weight_map"]) == set(pool.tensor_names)
    assert index["metadata"]["total_size"] == pool.model_bytes()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("abc")["input_ids"] == [4, 5, 6]
    assert (out / "generation_config.json").is_file()
    assert not list(tmp_path.glob(".merged*")), "temporary folder left behind"


def test_small_export_is_one_file_in_the_requested_dtype(pool, tmp_path):
    plan = MergePlan.create("linear", [1.0, 1.0, 2.0])
    out = export_merge(plan, pool, tmp_path / "bf16", dtype="bfloat16")
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    written = read_tensors(out)
    expected = dict(merged_tensors(plan, pool))
    for name, tensor in written.items():
        assert tensor.dtype == torch.bfloat16
        torch.testing.assert_close(tensor.float(), expected[name], rtol=2**-7, atol=1e-6)


def test_model_card_lists_method_checkpoints_weights_and_extra_sections(pool, tmp_path):
    plan = MergePlan.create("task_arithmetic", [0.7, 0.2, 0.1], {"lambda": 0.9}, seed=4)
    extra = {"Scores": {"demo_code/exact_match": 0.42}, "Study": "trial 17 of study demo"}
    out = export_merge(plan, pool, tmp_path / "card", card_extra=extra)
    card = (out / "README.md").read_text()
    assert "task_arithmetic" in card and "Base model: `base`" in card
    for name, weight in zip(pool.names, (0.7, 0.2, 0.1), strict=True):
        assert f"| `{name}` | {weight} |" in card
    assert "| lambda | 0.9 |" in card and plan.key in card
    assert "## Scores" in card and "demo_code/exact_match | 0.42" in card
    assert "## Study" in card and "trial 17 of study demo" in card
    # the Hub's convention for merges, as mergekit writes it: the inputs are the base models
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == ["base", *pool.names]
    assert meta["base_model_relation"] == "merge"
    assert {"merge", "mergekit", "merge-search"} <= set(meta["tags"])
    linear = export_merge(MergePlan.create("linear", [1, 1, 1]), pool, tmp_path / "linear")
    meta = yaml.safe_load((linear / "README.md").read_text().split("---")[1])
    assert meta["base_model"] == list(pool.names)  # linear reads no base


# methods mergekit lacks (fisher) write merge-search's extension: tests/search/commands/
# test_merge_fisher.py and tests/search/fisher/test_cache.py
@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].mergekit))
def test_mergekit_yaml_is_written_for_every_mergekit_method(pool, tiny_zoo, tmp_path, method):
    n = METHODS[method].n_checkpoints or 3
    sub = pool if n == 3 else CheckpointPool.open(tiny_zoo.checkpoints[:n])
    plan = MergePlan.create(method, [0.5, 0.3, 0.2][:n])
    out = export_merge(plan, sub, tmp_path / method)
    doc = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert doc["merge_method"] == METHODS[method].mergekit_name
    assert [m["model"] for m in doc["models"]] == [str(p) for p in sub.paths]
    assert ("base_model" in doc) == (METHODS[method].needs_base or method == "slerp")


@pytest.mark.parametrize(
    ("method", "weights", "params"),
    [
        ("linear", [0.5, 0.3, 0.2], {"normalize": True}),
        ("linear", [[0.9, 0.1], [0.05, 0.6], [0.05, 0.3]], {"normalize": False}),
        ("task_arithmetic", [0.6, 0.5, 0.3], {"lambda": 0.8}),
        (
            "ties",
            [[0.6, 0.2], [0.5, 0.5], [0.3, 0.7]],
            {"density": 0.4, "lambda": 1.0, "normalize": True},
        ),
        ("breadcrumbs", [0.5, 0.4, 0.3], {"density": 0.6, "gamma": 0.05, "lambda": 0.9}),
    ],
    ids=["linear", "linear-groups", "task_arithmetic", "ties-groups", "breadcrumbs"],
)
def test_exported_yaml_reproduces_in_mergekit(
    pool, tmp_path, mergekit_merge, method, weights, params
):
    plan = MergePlan.create(method, weights, params)
    out = export_merge(plan, pool, tmp_path / "ours")
    theirs = mergekit_merge((out / "mergekit_config.yml").read_text(), tmp_path / "mergekit")
    ours = read_tensors(out)
    assert set(theirs) == set(ours)
    for name, tensor in ours.items():
        torch.testing.assert_close(theirs[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_force_replaces_only_a_folder_merge_search_wrote(pool, tmp_path):
    plan = MergePlan.create("linear", [1.0, 1.0, 1.0])
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("user data")
    with pytest.raises(UserError, match="already exists"):
        export_merge(plan, pool, target)
    with pytest.raises(UserError, match=r"not written by merge-search \(no merge_search.json"):
        export_merge(plan, pool, target, force=True)
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    (target / "mine.txt").unlink()
    target.rmdir()
    export_merge(plan, pool, target)
    marker = json.loads((target / "merge_search.json").read_text())
    assert marker["made_by"] == "merge-search" and marker["plan_key"] == plan.key
    assert marker["checkpoints"] == [str(p) for p in pool.paths]
    (target / "extra.txt").write_text("left by someone")
    other = MergePlan.create("linear", [2.0, 1.0, 1.0])
    export_merge(other, pool, target, force=True)
    assert json.loads((target / "merge_search.json").read_text())["plan_key"] == other.key
    assert not (target / "extra.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left
    # a marker without the YAML beside it (or a marker of someone else) is not enough
    (target / "mergekit_config.yml").unlink()
    with pytest.raises(UserError, match="not written by merge-search"):
        export_merge(plan, pool, target, force=True)
    (target / "mergekit_config.yml").write_text("merge_method: linear\n")
    (target / "merge_search.json").write_text('{"made_by": "someone"}')
    with pytest.raises(UserError, match="not written by merge-search"):
        export_merge(plan, pool, target, force=True)
    file = tmp_path / "file.bin"
    file.write_bytes(b"x")
    with pytest.raises(UserError, match="not a folder"):
        export_merge(plan, pool, file, force=True)
    assert file.read_bytes() == b"x"


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("where", "words"),
    [
        (".", "contains an input checkpoint"),
        ("ft_a", "is an input checkpoint"),
        ("ft_a/sub", "lies inside an input checkpoint"),
        ("base", "is the base model"),
        ("tasks", "is the tasks folder"),
        ("tasks/out", "lies inside the tasks folder"),
        ("study.db", "is the study's SQLite file"),
    ],
)
def test_force_never_replaces_an_input_even_with_a_marker(tiny_zoo, tmp_path, where, words):
    import shutil

    home = tmp_path / "home"
    for path in (*tiny_zoo.checkpoints, tiny_zoo.base):
        shutil.copytree(path, home / path.name)
    (home / "tasks").mkdir()
    (home / "tasks" / "t.yaml").write_text("task: t\n")
    (home / "study.db").write_bytes(b"SQLite format 3\x00")
    for folder in (home, home / "ft_a", home / "base", home / "tasks"):  # markers do not help
        (folder / "merge_search.json").write_text('{"made_by": "merge-search"}')
        (folder / "mergekit_config.yml").write_text("merge_method: linear\n")
    before = _snapshot(home)
    names = [p.name for p in tiny_zoo.checkpoints]
    pool = CheckpointPool.open([home / n for n in names], home / "base")
    protected = [
        ("the tasks folder", home / "tasks"),
        ("the study's SQLite file", home / "study.db"),
    ]
    with pytest.raises(UserError, match=words):
        export_merge(
            MergePlan.create("linear", [1.0] * 3),
            pool,
            home / where,
            force=True,
            protected=protected,
        )
    assert _snapshot(home) == before


def test_export_never_overwrites_an_input_and_checks_the_plan_first(pool, tiny_zoo, tmp_path):
    with pytest.raises(UserError, match="is an input checkpoint"):
        export_merge(
            MergePlan.create("linear", [1.0] * 3), pool, tiny_zoo.checkpoints[0], force=True
        )
    with pytest.raises(UserError, match="2 weight rows"):
        export_merge(MergePlan.create("linear", [1.0] * 2), pool, tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_a_full_or_read_only_filesystem_is_refused_before_writing(pool, tmpfs, tmp_path):
    plan = MergePlan.create("linear", [1.0, 1.0, 1.0])
    small = tmpfs("small", "size=16k")
    with pytest.raises(UserError, match=r"needs \d+\.\d MB for the merged model but .* free"):
        export_merge(plan, pool, small / "deep" / "out")
    assert list(small.iterdir()) == []  # not even the parent folders
    readonly = tmpfs("readonly", "ro,size=64m")
    with pytest.raises(UserError, match=r"cannot write in .*readonly \(Read-only file system\)"):
        export_merge(plan, pool, readonly / "out")
    assert list(readonly.iterdir()) == []
