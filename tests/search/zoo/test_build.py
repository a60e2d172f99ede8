"""The demo pool builder at size="tiny", its skills data and its task files."""

from __future__ import annotations

import json
from itertools import islice

import pytest

from search.cli import main
from search.errors import UserError
from search.zoo import RECIPES, build_zoo
from search.zoo.skills import (
    SKILLS,
    SPLITS,
    demo_task_files,
    eval_prompts,
    eval_split,
    training_stream,
)
from tests.checkpoint_files import read_tensors


def test_layout_is_a_pool_of_hf_llama_folders(demo_zoo):
    from transformers import AutoConfig, AutoTokenizer

    names = [p.name for p in demo_zoo.checkpoints]
    assert names == RECIPES["mixtures"]["tiny"].checkpoint_names() and len(names) >= 6
    for folder in (demo_zoo.base, *demo_zoo.checkpoints):
        assert AutoConfig.from_pretrained(folder).model_type == "llama"
        assert set(read_tensors(folder)) == set(read_tensors(demo_zoo.base))
    tok = AutoTokenizer.from_pretrained(demo_zoo.base)
    text = "a=4;b=a+3;print(b)?7\nreverse: Stone?"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    manifest = json.loads((demo_zoo.out_dir / "zoo.json").read_text())
    assert set(manifest["scores"]) == {"base", *names}
    assert all(set(s) == {"code", "instruct"} for s in manifest["scores"].values())


def test_fine_tunes_differ_from_the_base_and_each_other(demo_zoo):
    base = read_tensors(demo_zoo.base)["model.layers.0.mlp.up_proj.weight"]
    seen = [base]
    for folder in demo_zoo.checkpoints:
        t = read_tensors(folder)["model.layers.0.mlp.up_proj.weight"]
        assert all(not bool((t == s).all()) for s in seen), folder.name
        seen.append(t)


def test_second_build_is_a_cache_hit(demo_zoo, capsys):
    stamp = (demo_zoo.base / "model.safetensors").stat().st_mtime_ns
    again = build_zoo(demo_zoo.out_dir, seed=0, size="tiny", progress=True, recipe="mixtures")
    assert again.cached
    assert again.checkpoints == demo_zoo.checkpoints and again.scores == demo_zoo.scores
    assert (demo_zoo.base / "model.safetensors").stat().st_mtime_ns == stamp
    assert capsys.readouterr().out == ""  # the library returns; `zoo build` prints the summary
    assert again.summary().splitlines()[0].startswith(f"zoo: {demo_zoo.out_dir} is up to date")


def test_summary_is_the_score_table_then_the_build_time(demo_zoo):
    lines = demo_zoo.summary().splitlines()
    assert lines[0].split() == ["checkpoint", "code", "instruct", "mean"]
    assert [row.split()[0] for row in lines[1:-1]] == list(demo_zoo.scores)
    base = demo_zoo.scores["base"]
    assert lines[1].split()[1:3] == [f"{base['code']:.3f}", f"{base['instruct']:.3f}"]
    assert lines[-1] == f"zoo: built {demo_zoo.out_dir} in {demo_zoo.build_s:.0f} s"


def test_same_seed_same_tensors_other_seed_other_tensors(demo_zoo, tmp_path):
    same = build_zoo(
        tmp_path / "same", seed=0, size="tiny", progress=False, score=False, recipe="mixtures"
    )
    pairs = zip((demo_zoo.base, *demo_zoo.checkpoints), (same.base, *same.checkpoints), strict=True)
    for a, b in pairs:
        ta, tb = read_tensors(a), read_tensors(b)
        assert all(bool((ta[k] == tb[k]).all()) for k in ta), a.name
    other = build_zoo(
        tmp_path / "other", seed=1, size="tiny", progress=False, score=False, recipe="mixtures"
    )
    assert other.key != demo_zoo.key
    ta, tb = read_tensors(demo_zoo.checkpoints[0]), read_tensors(other.checkpoints[0])
    assert not all(bool((ta[k] == tb[k]).all()) for k in ta)


def test_a_folder_that_is_not_a_pool_is_refused(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists and is not a demo pool"):
        build_zoo(tmp_path / "mine", size="tiny", progress=False)
    assert main(["zoo", "build", str(tmp_path / "mine")]) == 2
    assert "is not a demo pool" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_committed_task_files_match_a_regeneration(demo_tasks_path):
    files = demo_task_files(seed=0)
    assert sorted(p.name for p in demo_tasks_path.iterdir()) == sorted(files)
    for name, text in files.items():
        assert (demo_tasks_path / name).read_text() == text, name
    assert set(files) >= {f"demo_{s}{split}.yaml" for s in SKILLS for split in SPLITS}


def test_splits_are_disjoint_and_training_never_sees_them():
    held = eval_prompts()
    for skill in SKILLS:
        search = {d["prompt"] for d in eval_split(skill, "")}
        heldout = {d["prompt"] for d in eval_split(skill, "_heldout")}
        test = {d["prompt"] for d in eval_split(skill, "_test")}
        assert len(search) == 200 and len(heldout) == len(test) == 1000
        assert not search & heldout and not (search | heldout) & test
        for text in islice(training_stream(skill, 0, held), 3000):
            assert text.endswith("\n") and text[: text.index("?") + 1] not in held


def test_fine_tunes_in_worker_processes_match_the_sequential_build(demo_zoo, tmp_path):
    from search.zoo.runs import fine_tune_all

    steps = []
    fine_tune_all(
        "mixtures", "tiny", 0, demo_zoo.base, tmp_path, lambda n, name: steps.append(n), workers=2
    )
    assert sum(steps) == sum(r.steps for r in RECIPES["mixtures"]["tiny"].runs)
    for folder in demo_zoo.checkpoints:
        ta, tb = read_tensors(folder), read_tensors(tmp_path / folder.name)
        assert all(bool((ta[k] == tb[k]).all()) for k in ta), folder.name


def test_recycle_recipe_builds_its_pool_of_recycled_kinds(demo_zoo, tmp_path):
    """The default recipe (``--recipe recycle``): twelve checkpoints from one base: the
    ``mixtures`` runs (the same tensors), an early checkpoint, an off-target run (arithmetic),
    a too-hot and an over-trained run; deterministic; a pool of another recipe in the same
    folder is rebuilt, not reused."""
    from search.zoo.recipe import DEFAULT_RECIPE

    assert DEFAULT_RECIPE == "recycle"
    full = RECIPES["recycle"]["full"]
    names = full.checkpoint_names()
    assert len(names) == 12 and len(set(names)) == 12
    runs = {r.name: r for r in full.runs}
    assert runs["arith"].skill == "arith" and runs["overfit"].fixed_examples
    assert runs["too_hot"].lr >= 5 * max(r.lr for r in full.runs if r.name != "too_hot")
    assert min(runs["balanced"].save_at) <= full.runs[0].steps // 10  # the early checkpoint

    a = build_zoo(tmp_path / "a", size="tiny", progress=False, score=False)
    tiny = RECIPES["recycle"]["tiny"].checkpoint_names()
    assert a.recipe == "recycle" and [p.name for p in a.checkpoints] == tiny and len(tiny) == 12
    b = build_zoo(tmp_path / "b", size="tiny", progress=False, score=False)
    for x, y in zip((a.base, *a.checkpoints), (b.base, *b.checkpoints), strict=True):
        tx, ty = read_tensors(x), read_tensors(y)
        assert all(bool((tx[k] == ty[k]).all()) for k in tx), x.name
    assert a.key != demo_zoo.key
    for folder in demo_zoo.checkpoints:  # the mixtures pool's runs, trained identically
        tx, ty = read_tensors(folder), read_tensors(a.out_dir / folder.name)
        assert all(bool((tx[k] == ty[k]).all()) for k in tx), folder.name
    other = build_zoo(tmp_path / "a", size="tiny", progress=False, score=False, recipe="mixtures")
    assert not other.cached and other.recipe == "mixtures"
    assert [p.name for p in other.checkpoints] == RECIPES["mixtures"]["tiny"].checkpoint_names()


def test_off_target_run_trains_on_arithmetic_only():
    from search.zoo.train import mixture_texts

    texts = list(islice(mixture_texts(0.5, 3, eval_prompts(), skill="arith"), 50))
    for text in texts:
        prompt, answer = text.rstrip("\n").split("?")
        x, y = prompt.split("+")
        assert int(x) + int(y) == int(answer)


def test_unknown_recipe_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(UserError, match="zoo recipe 'soup': expected one of mixtures, recycle"):
        build_zoo(tmp_path / "z", recipe="soup", progress=False)
    with pytest.raises(SystemExit):
        main(["zoo", "build", str(tmp_path / "z"), "--recipe", "soup"])
    assert "invalid choice: 'soup'" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize(
    ("config", "recipe", "folder"),
    [
        ("demo.yaml", "recycle", "studies/zoo"),
        ("mixtures.yaml", "mixtures", "studies/zoo-mixtures"),
    ],
)
def test_committed_configs_list_their_recipe_pool(config, recipe, folder):
    """configs/demo.yaml is the recycling pool (as `make demo` builds it), configs/mixtures.yaml
    the mixtures pool: every checkpoint of the recipe, in the recipe's order."""
    from pathlib import Path

    import yaml

    data = yaml.safe_load((Path(__file__).parents[3] / "configs" / config).read_text())
    names = RECIPES[recipe]["full"].checkpoint_names()
    assert data["checkpoints"] == [f"{folder}/{n}" for n in names]
    assert data["base_model"] == f"{folder}/base"
