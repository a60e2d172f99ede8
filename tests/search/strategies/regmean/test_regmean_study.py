"""RegMean as a study's method (alpha searched) from launch to export, `merge-search merge`
with `merge_method: regmean`, and bad settings refused in one line (real pool, lm-eval, SQLite,
safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from safetensors.torch import load_file, save_file

from search.cli import main
from search.engine.materialize import merged_tensors as _merged_tensors
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.strategies import get_method
from search.strategies.regmean.cache import GRAM_FILE, grams_from_file, hold_grams
from search.study.record import TrialRecord
from tests.search.study_fixtures import build_pool_and_tasks, cli, study_config, write_config


def merged(plan, pool):
    return dict(_merged_tensors(plan, pool, None, get_method(plan.method)))


@pytest.fixture(scope="module")
def paths(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("regmean")
    return {"root": root, **build_pool_and_tasks(root, tiny_zoo)}


def _yaml(paths: dict[str, Any], parameters: str, method: str = "regmean") -> str:
    text = f"merge_method: {method}\nmodels:\n"
    for path, weight in zip(paths["checkpoints"], (0.5, 0.3, 0.4), strict=True):
        text += f"  - model: {path}\n    parameters: {{weight: {weight}}}\n"
    return text + f"parameters: {{{parameters}}}\ndtype: float32\n"


def test_a_regmean_yaml_merges_with_grams_of_its_calibration_file(paths, tmp_path):
    config = tmp_path / "regmean.yml"
    text = paths["text"]
    config.write_text(_yaml(paths, f"alpha: 0.8, regmean_data: {text}, regmean_examples: 5"))
    out = tmp_path / "out"
    assert main(["merge", str(config), str(out)]) == 0

    pool = CheckpointPool.open(paths["checkpoints"])
    grams_from_file(pool, Path(text), 5)
    assert pool.extras("gram").info["source"]["examples"] == 5
    expected = merged(MergePlan.create("regmean", [0.5, 0.3, 0.4], {"alpha": 0.8}), pool)
    written = load_file(str(out / "model.safetensors"))
    assert set(written) == set(expected)
    for name, tensor in written.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    yaml_text = (out / "mergekit_config.yml").read_text()
    assert yaml_text.startswith("# note: mergekit 0.1.5 has no regmean method")
    assert "alpha: 0.8" in yaml_text
    card = (out / "README.md").read_text()
    assert "## RegMean calibration" in card and text in card
    assert (out / "regmean_calibration.jsonl").read_text().count("\n") == 5


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ("alpha: 1.5, regmean_data: {text}", "alpha: expected a value in [0.0, 1.0], got 1.5"),
        ("alpha: 0.5", "parameters.regmean_data: required for merge_method regmean"),
        ("regmean_data: {text}, regmean_examples: 0", "parameters.regmean_examples"),
    ],
    ids=["alpha-above-1", "no-data", "zero-n"],
)
def test_bad_regmean_yaml_is_one_line_and_nothing_is_written(
    paths, tmp_path, capsys, parameters, expected
):
    config = tmp_path / "regmean.yml"
    config.write_text(_yaml(paths, parameters.format(text=paths["text"])))
    assert main(["merge", str(config), str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("merge", "expected"),
    [
        (
            {"params": {"alpha": 1.5}, "regmean": {"tasks": "from_objectives"}},
            "merge.params.alpha: expected a value in [0.0, 1.0] or a {low, high} range (got 1.5)",
        ),
        (
            {"params": {"alpha": {"low": -0.5, "high": 0.5}}, "regmean": {"data": "x.txt"}},
            "merge.params.alpha: range [-0.5, 0.5] must lie inside the method's range [0.0, 1.0]",
        ),
        ({}, "merge.regmean: method 'regmean' needs calibration data"),
    ],
    ids=["alpha-above-1", "alpha-range-below-0", "no-calibration"],
)
def test_a_bad_regmean_study_config_is_one_line_exit_2(
    paths, tmp_path, monkeypatch, capsys, merge, expected
):
    monkeypatch.chdir(tmp_path)
    data = study_config(paths, "bad", f"sqlite:///{tmp_path / 'studies' / 'bad.db'}")
    data["merge"] = {"method": "regmean", **merge}
    config = write_config(tmp_path / "bad.yaml", data)
    assert main(["launch", str(config)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "studies").exists()


def test_a_regmean_study_searches_alpha_resumes_from_the_cache_and_exports(paths, tmp_path):
    root = paths["root"]
    storage = f"sqlite:///{root / 'studies' / 'regmean-e2e.db'}"
    data = study_config(paths, "regmean-e2e", storage, budget={"n_trials": 3})
    data["merge"] = {
        "method": "regmean",
        "regmean": {"tasks": "from_objectives", "examples": 4},
        "params": {"alpha": {"low": 0.1, "high": 1.0}},
        "weights": {"low": 0.0, "high": 1.0},
    }
    config = write_config(root / "regmean-e2e.yaml", data)
    proc = cli("launch", str(config), cwd=root)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "RegMean Grams of 28 linear layers for 3 checkpoints on 4 examples" in err
    assert "3 computed" in err
    cache = root / "studies" / ".regmean"
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 3

    study = optuna.load_study(study_name="regmean-e2e", storage=storage)
    assert study.user_attrs["search_space"]["regmean"]["examples"] == 4

    proc = cli("launch", str(config), "--n-trials", "6", cwd=root)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "0 computed, 3 from the cache" in err
    assert sorted(p.name for p in cache.iterdir()) == entries
    # the seed trials (uniform, one per checkpoint) take alpha's default; the sampler draws it
    done = optuna.load_study(study_name="regmean-e2e", storage=storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    assert len(done) == 6
    assert [t.params["alpha"] for t in done[:4]] == [1.0] * 4
    drawn = [t.params["alpha"] for t in done[4:]]
    assert all(0.1 <= a < 1.0 for a in drawn) and drawn[0] != drawn[1]

    # Scale one cached Gram of one layer by a non-uniform factor: an export that reuses the
    # cache merges with it.
    pool = CheckpointPool.open(paths["checkpoints"], paths["base_model"])
    keys = _keys(cache, pool)
    computed = [load_file(str(cache / key / GRAM_FILE)) for key in keys]
    changed = dict(computed[0])
    name = "model.layers.1.mlp.down_proj.weight"
    scale = torch.linspace(0.5, 2.0, changed[name].shape[0])
    changed[name] = scale[:, None] * changed[name] * scale[None, :]
    save_file(changed, str(cache / keys[0] / GRAM_FILE))

    out = tmp_path / "export"
    proc = cli("export", str(config), "--trial", "5", "--out", str(out), cwd=root)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    yaml_text = (out / "mergekit_config.yml").read_text()
    assert yaml_text.startswith("# note: mergekit 0.1.5 has no regmean method")
    assert f"regmean_data: {out / 'regmean_calibration.jsonl'}" in yaml_text
    assert "regmean_examples: 4" in yaml_text
    card = (out / "README.md").read_text()
    assert "## RegMean calibration" in card and "tasks: from_objectives" in card
    assert "mergekit has no `regmean` method" in card
    assert len((out / "regmean_calibration.jsonl").read_text().splitlines()) == 4

    trial = done[5]
    plan = MergePlan.from_dict(TrialRecord.from_trial(trial).plan)
    assert dict(plan.params)["alpha"] == trial.params["alpha"] < 1.0
    assert f"alpha: {trial.params['alpha']}" in yaml_text
    exported = load_file(str(out / "model.safetensors"))
    with_cache = merged(plan, hold_grams(pool.load(), [changed, *computed[1:]]))
    for n, tensor in exported.items():
        torch.testing.assert_close(tensor, with_cache[n], rtol=0, atol=0, msg=n)

    # `merge-search merge` reproduces the merge from the exported YAML and calibration file
    # (computing the Grams afresh: the unchanged ones).
    again = tmp_path / "again"
    assert main(["merge", str(out / "mergekit_config.yml"), str(again)]) == 0
    remerged = load_file(str(again / "model.safetensors"))
    fresh = merged(plan, hold_grams(pool, computed))
    for n, tensor in remerged.items():
        torch.testing.assert_close(tensor, fresh[n], rtol=1e-5, atol=1e-6, msg=n)
    assert not torch.allclose(remerged[name], exported[name], rtol=1e-4, atol=1e-6)


def _keys(cache: Path, pool: CheckpointPool) -> list[str]:
    """The cache entries in pool order (by the checkpoint name each one records)."""
    by_name = {
        json.loads((entry / "meta.json").read_text())["checkpoint"]["name"]: entry.name
        for entry in cache.iterdir()
    }
    return [by_name[name] for name in pool.names]
