"""The Fisher cache, bad calibration data, and a fisher study from launch to export (real pool,
lm-eval, SQLite, safetensors)."""

from __future__ import annotations

import json
import shutil
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
from search.strategies.fisher.cache import (
    FISHER_FILE,
    calibration_from_file,
    hold_fishers,
    load_fishers,
)
from search.study.record import TrialRecord
from tests.search.study_fixtures import build_pool_and_tasks, cli, study_config, write_config


def merged_tensors(plan, pool, dtype=None):
    """The engine's merged_tensors with the plan's method looked up as the study does (methods
    that strategies provide included)."""
    return _merged_tensors(plan, pool, dtype, get_method(plan.method))


@pytest.fixture(scope="module")
def paths(tiny_zoo: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fisher")
    return {"root": root, **build_pool_and_tasks(root, tiny_zoo)}


def _fisher_stacks(pool: CheckpointPool) -> dict[str, torch.Tensor]:
    return {n: pool.extras("fisher").get(n).clone() for n in pool.tensor_names}


def test_the_cache_is_hit_on_a_second_run_and_missed_after_a_checkpoint_changes(
    paths: dict[str, Any], tmp_path: Path
) -> None:
    checkpoints = []
    for source in paths["checkpoints"]:
        shutil.copytree(source, tmp_path / Path(source).name)
        checkpoints.append(tmp_path / Path(source).name)
    cache = tmp_path / ".fisher"
    data = calibration_from_file(Path(paths["text"]), 4, "test")

    first_pool = CheckpointPool.open(checkpoints)
    first = load_fishers(first_pool, data, cache, progress=False)
    assert set(first.computed) == set(first_pool.names)
    assert first.backward_passes == 3 * 4  # K x N, one per example
    assert sorted(p.name for p in cache.iterdir()) == sorted(first.keys)
    meta = json.loads((cache / first.keys[0] / "meta.json").read_text())
    assert meta["examples"] == 4 and meta["data_sha256"] == data.sha256
    before = _fisher_stacks(first_pool)

    again_pool = CheckpointPool.open(checkpoints)
    again = load_fishers(again_pool, data, cache, progress=False)
    assert again.computed == () and again.backward_passes == 0 and again.keys == first.keys
    assert all(torch.equal(before[n], t) for n, t in _fisher_stacks(again_pool).items())

    # Retrain one checkpoint: only its Fisher is computed again.
    file = checkpoints[0] / "model.safetensors"
    tensors = load_file(str(file))
    tensors["model.layers.0.mlp.up_proj.weight"] += 0.05
    save_file(tensors, str(file), metadata={"format": "pt"})
    changed_pool = CheckpointPool.open(checkpoints)
    changed = load_fishers(changed_pool, data, cache, progress=False)
    assert changed.computed == (changed_pool.names[0],)
    assert changed.keys[1:] == first.keys[1:] and changed.keys[0] != first.keys[0]
    after = _fisher_stacks(changed_pool)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(after[name][0], before[name][0])
    assert all(torch.equal(after[n][1:], before[n][1:]) for n in after)

    # Other data (another N) is another key for every checkpoint.
    fewer = calibration_from_file(Path(paths["text"]), 3, "test")
    other = load_fishers(CheckpointPool.open(checkpoints), fewer, cache, progress=False)
    assert len(other.computed) == 3


@pytest.mark.parametrize(
    ("content", "suffix", "expected"),
    [
        ('{"prompt": "a", "answer": "b"}\n', ".jsonl", "expected an object with a string 'text'"),
        ("\n\n", ".txt", "has no examples"),
        ("{not json\n", ".jsonl", "not valid JSON"),
    ],
    ids=["no-text-field", "zero-examples", "not-json"],
)
def test_bad_calibration_data_is_one_line_exit_2_nothing_written(
    paths: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: str,
    suffix: str,
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    calib = tmp_path / f"calib{suffix}"
    calib.write_text(content)
    data = study_config(paths, "bad-calib", f"sqlite:///{tmp_path / 'studies' / 'bad.db'}")
    data["merge"] = {"method": "fisher", "fisher": {"data": str(calib), "examples": 4}}
    config = write_config(tmp_path / "bad.yaml", data)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["launch", str(config)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "merge.fisher.data" in lines[0] and expected in lines[0], lines
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no study, no cache


def test_a_fisher_study_computes_once_resumes_from_the_cache_and_exports(
    paths: dict[str, Any], tmp_path: Path
) -> None:
    root = paths["root"]
    storage = f"sqlite:///{root / 'studies' / 'fisher-e2e.db'}"
    data = study_config(paths, "fisher-e2e", storage, budget={"n_trials": 3})
    data["merge"] = {
        "method": "fisher",
        "fisher": {"tasks": "from_objectives", "examples": 4},
        "weights": {"low": 0.0, "high": 1.0},
    }
    config = write_config(root / "fisher-e2e.yaml", data)
    proc = cli("launch", str(config), cwd=root)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Fishers of 3 checkpoints on 4 examples" in err and "3 computed" in err
    cache = root / "studies" / ".fisher"
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 3

    study = optuna.load_study(study_name="fisher-e2e", storage=storage)
    recorded = study.user_attrs["search_space"]["fisher"]
    assert recorded["examples"] == 4 and recorded["data"].startswith("tasks: from_objectives")

    proc = cli("launch", str(config), "--n-trials", "5", cwd=root)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "0 computed" in err and "3 from the cache" in err
    assert sorted(p.name for p in cache.iterdir()) == entries

    # Scale one cached Fisher: an export that reuses the cache merges with the scaled one.
    pool = CheckpointPool.open(paths["checkpoints"], paths["base_model"])
    keys = _keys(cache, pool)
    computed = [load_file(str(cache / key / FISHER_FILE)) for key in keys]
    scaled = {n: 3.0 * t for n, t in computed[0].items()}
    save_file(scaled, str(cache / keys[0] / FISHER_FILE))

    out = tmp_path / "export"
    proc = cli("export", str(config), "--trial", "4", "--out", str(out), cwd=root)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert sorted(p.name for p in cache.iterdir()) == entries
    yaml_text = (out / "mergekit_config.yml").read_text()
    assert yaml_text.startswith("# note: mergekit 0.1.5 has no fisher method")
    assert f"fisher_data: {out / 'fisher_calibration.jsonl'}" in yaml_text
    assert "fisher_examples: 4" in yaml_text
    card = (out / "README.md").read_text()
    assert "## Fisher calibration" in card and "tasks: from_objectives" in card
    assert "mergekit has no `fisher` method" in card
    records = (out / "fisher_calibration.jsonl").read_text().splitlines()
    assert len(records) == 4

    plan = MergePlan.from_dict(
        TrialRecord.from_trial(
            optuna.load_study(study_name="fisher-e2e", storage=storage).trials[4]
        ).plan
    )
    exported = load_file(str(out / "model.safetensors"))
    with_cache = dict(merged_tensors(plan, hold_fishers(pool, [scaled, *computed[1:]])))
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, with_cache[name], rtol=0, atol=0, msg=name)

    # `merge-search merge` reproduces the merge from the exported YAML and calibration file
    # (computing the Fishers afresh: the unscaled ones).
    again = tmp_path / "again"
    assert main(["merge", str(out / "mergekit_config.yml"), str(again)]) == 0
    remerged = load_file(str(again / "model.safetensors"))
    fresh = dict(merged_tensors(plan, hold_fishers(pool, computed)))
    for name, tensor in remerged.items():
        torch.testing.assert_close(tensor, fresh[name], rtol=1e-6, atol=1e-7, msg=name)
    name = "model.layers.1.mlp.up_proj.weight"
    assert not torch.allclose(remerged[name], exported[name], rtol=1e-6, atol=1e-7)


def _keys(cache: Path, pool: CheckpointPool) -> list[str]:
    """The cache entries in pool order (by the checkpoint name each one records)."""
    by_name = {
        json.loads((entry / "meta.json").read_text())["checkpoint"]["name"]: entry.name
        for entry in cache.iterdir()
    }
    return [by_name[name] for name in pool.names]


def test_a_resume_with_other_calibration_data_is_refused(paths: dict[str, Any], tmp_path: Path):
    from search.errors import UserError
    from search.study.config import parse_config
    from search.study.space import SearchSpace
    from search.study.storage import create_or_resume, open_storage

    def config(examples: int) -> Any:
        data = study_config(paths, "calib-resume", f"sqlite:///{tmp_path / 'r.db'}")
        data["merge"] = {
            "method": "fisher",
            "fisher": {"data": paths["text"], "examples": examples},
        }
        return parse_config(data)

    cfg = config(4)
    pool = CheckpointPool.open(paths["checkpoints"], paths["base_model"])
    space = SearchSpace.build(cfg, pool.names)
    storage = open_storage(cfg, create=True)
    _, created = create_or_resume(cfg, storage, space, pool.identity.fingerprint(), "c.yml")
    assert created
    _, created = create_or_resume(config(4), storage, space, pool.identity.fingerprint(), "c.yml")
    assert not created
    with pytest.raises(UserError, match=r"search space changed \(fisher\.examples: 4 -> 3\)"):
        create_or_resume(config(3), storage, space, pool.identity.fingerprint(), "c.yml")
