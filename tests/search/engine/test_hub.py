"""Hub IDs as checkpoints: resolved from a Hugging Face cache built here (no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from search.cli import main
from search.engine.hub import hub_id, model_name, model_source, resolve_model
from tests.checkpoint_files import read_tensors
from tests.search.report_fixtures import write_study_config

REPO = Path(__file__).resolve().parents[3]
COMMITS = {name: f"{i + 1}" * 40 for i, name in enumerate(("base", "ft_a", "ft_b", "ft_c"))}
HF_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_cache(home: Path, zoo) -> None:
    """``$HF_HOME/hub`` holding the tiny pool as ``merge-search/<folder name>`` at ``main``:
    ``models--ORG--NAME/refs/main`` (the commit) and ``snapshots/<commit>/`` (plain copies)."""
    for folder in (zoo.base, *zoo.checkpoints):
        repo = home / "hub" / f"models--merge-search--{folder.name}"
        commit = COMMITS[folder.name]
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)


def run_cli(
    args: list[str], home: Path, *, offline: bool, cwd: Path
) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter (huggingface_hub reads HF_HOME and HF_HUB_OFFLINE at
    import), against the cache in ``home``; online-shaped runs see an endpoint that refuses
    every connection, so nothing can reach a real hub."""
    env = {k: v for k, v in os.environ.items() if k not in HF_VARIABLES}
    env.update(PYTHONPATH=str(REPO), HF_HOME=str(home), HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_CACHE", None)
    if offline:
        env.update(dict.fromkeys(HF_VARIABLES, "1"))
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def merge_yaml(base: str, models: list[str]) -> str:
    lines = ["merge_method: task_arithmetic", f"base_model: {base}", "models:"]
    for model, weight in zip(models, (0.5, 0.3, 0.4), strict=True):
        lines += [f"  - model: {model}", f"    parameters: {{weight: {weight}}}"]
    return "\n".join([*lines, "parameters: {lambda: 0.8}", "dtype: float32", ""])


def test_hub_ids_resolve_from_the_cache_online_and_export_as_ids(tiny_zoo, tmp_path):
    home = tmp_path / "hf"
    hub_cache(home, tiny_zoo)
    ids = ["merge-search/ft_a", f"merge-search/ft_b@{COMMITS['ft_b']}", "merge-search/ft_c"]
    (tmp_path / "hub.yml").write_text(merge_yaml("merge-search/base", ids))
    done = run_cli(["merge", "hub.yml", "by_id"], home, offline=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # the same merge of the local folders: the same tensors
    local = [str(p) for p in tiny_zoo.checkpoints]
    (tmp_path / "local.yml").write_text(merge_yaml(str(tiny_zoo.base), local))
    assert main(["merge", str(tmp_path / "local.yml"), str(tmp_path / "by_path")]) == 0
    by_id, by_path = read_tensors(tmp_path / "by_id"), read_tensors(tmp_path / "by_path")
    assert by_id.keys() == by_path.keys()
    assert all(torch.equal(by_id[n], by_path[n]) for n in by_id)
    # the YAML names each input by ID at the commit merged; the card's base_model list by ID
    doc = yaml.safe_load((tmp_path / "by_id" / "mergekit_config.yml").read_text())
    assert doc["base_model"] == f"merge-search/base@{COMMITS['base']}"
    assert [m["model"] for m in doc["models"]] == [
        f"merge-search/{n}@{COMMITS[n]}" for n in ("ft_a", "ft_b", "ft_c")
    ]
    card = (tmp_path / "by_id" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == [f"merge-search/{n}" for n in ("base", "ft_a", "ft_b", "ft_c")]
    assert "| `ft_a` |" in card  # the checkpoint table: the model's own name, not the commit


def test_offline_a_cached_id_resolves_and_a_missing_one_is_refused_in_one_line(tiny_zoo, tmp_path):
    home = tmp_path / "hf"
    hub_cache(home, tiny_zoo)
    ids = [f"merge-search/{n}" for n in ("ft_a", "ft_b", "ft_c")]
    (tmp_path / "hub.yml").write_text(merge_yaml("merge-search/base", ids))
    done = run_cli(["merge", "hub.yml", "out"], home, offline=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # a study config naming a model the cache lacks: refused before anything is written
    folder = tmp_path / "study"
    folder.mkdir()
    config = write_study_config(
        folder,
        "hub",
        tiny_zoo,
        checkpoints=["merge-search/ft_a", "merge-search/absent", "merge-search/ft_c"],
        base_model="merge-search/base",
    )
    done = run_cli(["launch", str(config)], home, offline=True, cwd=tmp_path)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert err.count("\n") == 0, err
    assert "checkpoints[1]: folder merge-search/absent does not exist" in err
    assert "as a Hub ID it is not in the Hugging Face cache" in err
    assert "HF_HUB_OFFLINE is set" in err and "`hf download merge-search/absent`" in err
    assert not (folder / "studies.db").exists()


def test_a_folder_that_exists_wins_over_an_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert resolve_model("org/model", "checkpoints[0]") == Path("org/model")
    assert resolve_model("./not/an-id", "checkpoints[0]") == Path("./not/an-id")
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / ("a" * 40)
    assert hub_id(snapshot) == ("org/model", "a" * 40)
    assert model_source(snapshot) == f"org/model@{'a' * 40}" and model_name(snapshot) == "model"
    assert hub_id(tmp_path / "org" / "model") is None
    assert model_source(tmp_path / "org" / "model") == str(tmp_path / "org" / "model")
