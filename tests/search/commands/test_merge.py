"""`merge-search merge CONFIG.yml OUT_DIR`: end to end, same YAML as mergekit, clear errors."""

from __future__ import annotations

import pytest
import torch

from search.cli import main
from tests.checkpoint_files import read_tensors


def _yaml(zoo, method: str, params: str, per_model: str, base: bool = True) -> str:
    a, b, c = zoo.checkpoints
    text = f"merge_method: {method}\n"
    if base:
        text += f"base_model: {zoo.base}\n"
    text += "models:\n"
    for path, weight in ((a, 0.5), (b, 0.3), (c, 0.4)):
        text += f"  - model: {path}\n    parameters: {{weight: {weight}{per_model}}}\n"
    return text + f"parameters: {{{params}}}\ndtype: float32\n"


CONFIGS = {
    "linear": ("linear", "normalize: true", "", False),
    "task_arithmetic": ("task_arithmetic", "lambda: 0.7", "", True),
    "ties": ("ties", "normalize: true, lambda: 1.1", ", density: 0.5", True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_yaml_gives_mergekits_tensors(tiny_zoo, tmp_path, mergekit_merge, name):
    method, params, per_model, base = CONFIGS[name]
    config = tmp_path / "merge.yml"
    config.write_text(_yaml(tiny_zoo, method, params, per_model, base))
    assert main(["merge", str(config), str(tmp_path / "ours")]) == 0
    theirs = mergekit_merge(config.read_text(), tmp_path / "theirs")
    ours = read_tensors(tmp_path / "ours")
    assert set(ours) == set(theirs)
    for tensor_name, tensor in ours.items():
        torch.testing.assert_close(
            tensor, theirs[tensor_name], rtol=1e-5, atol=1e-6, msg=tensor_name
        )
    assert (tmp_path / "ours" / "README.md").is_file()


def test_relative_paths_resolve_against_the_current_directory(
    tiny_zoo, tmp_path, monkeypatch, capsys
):
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tiny_zoo.base.parent)
    config = tmp_path / "cfg" / "slerp.yml"
    config.parent.mkdir()
    config.write_text(
        "merge_method: slerp\nbase_model: ft_a\nmodels:\n  - model: ft_a\n  - model: ft_c\n"
        "parameters:\n  t: 0.25\ndtype: bfloat16\n"
    )
    out = tmp_path / "slerp_out"
    assert main(["merge", str(config), str(out), "--dtype", "float32"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.float32
    assert main(["merge", str(config), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(config), str(out), "--force"]) == 0
    assert next(iter(read_tensors(out).values())).dtype == torch.bfloat16


LINEAR = "merge_method: linear\nmodels:\n  - model: a\n"
WEIGHT = "    parameters: {weight: 1}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "merge_method: della\nmodels:\n  - model: a\n",
            ["della", "supported", "linear", "ties", "slerp"],
        ),
        (
            LINEAR + "    parameters: {weight: 1, epsilon: 0.1}\n",
            ["epsilon", "weight", "density"],
        ),
        (
            LINEAR + WEIGHT + "tokenizer_source: base\n",
            ["tokenizer_source", "merge_method", "base_model"],
        ),
        (
            LINEAR + WEIGHT + "parameters: {lambda: 2}\n",
            ["lambda", "supported: normalize"],
        ),
        (
            "merge_method: ties\nmodels:\n  - model: a\n    parameters: {weight: 1}\n",
            ["needs base_model"],
        ),
        ("merge_method: linear\nmodels:\n  - model: a\n", ["weight", "required"]),
        (
            "merge_method: ties\nbase_model: b\nmodels:\n  - model: a\n"
            "    parameters: {weight: 1, density: 3}\n",
            ["density", "[0.01, 1.0]"],
        ),
        ("merge_method: [oops\n", ["not readable YAML"]),
    ],
    ids=["method", "model-key", "top-key", "param", "base", "weight", "range", "yaml"],
)
def test_bad_configs_give_one_clear_line_and_status_2(tmp_path, capsys, text, expected):
    config = tmp_path / "bad.yml"
    config.write_text(text)
    assert main(["merge", str(config), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("merge-search: error:")
    for piece in expected:
        assert piece in err
    assert not (tmp_path / "out").exists()


def test_missing_model_folder_is_named(tiny_zoo, tmp_path, capsys):
    config = tmp_path / "m.yml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {tiny_zoo.checkpoints[0]}\n"
        "    parameters: {weight: 1}\n"
        f"  - model: {tmp_path / 'gone'}\n    parameters: {{weight: 1}}\n"
    )
    assert main(["merge", str(config), str(tmp_path / "out")]) == 2
    assert "gone: checkpoint folder not found" in capsys.readouterr().err


def test_every_pool_placement_writes_the_same_files(tiny_zoo, tmp_path, capsys):
    config = tmp_path / "ties.yml"
    config.write_text(_yaml(tiny_zoo, *CONFIGS["ties"]))
    written = {}
    for pool in ("device", "host", "disk", "auto"):
        out = tmp_path / pool
        assert main(["merge", str(config), str(out), "--pool", pool]) == 0
        line = capsys.readouterr().out
        assert f"pool {'device' if pool == 'auto' else pool}" in line  # a tiny pool fits
        written[pool] = (out / "model.safetensors").read_bytes()
    assert len(set(written.values())) == 1


def test_truncated_checkpoint_is_one_line_before_anything_is_written(tiny_zoo, tmp_path, capsys):
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(tiny_zoo.checkpoints[2], cut)
    file = cut / "model.safetensors"
    with open(file, "r+b") as f:
        f.truncate(file.stat().st_size - 10)
    config = tmp_path / "m.yml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - model: {tiny_zoo.checkpoints[0]}\n"
        f"    parameters: {{weight: 1}}\n  - model: {cut}\n    parameters: {{weight: 1}}\n"
    )
    assert main(["merge", str(config), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(file) in err and "truncated" in err
    assert not (tmp_path / "out").exists()


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("where", "words"),
    [
        (".", "contains an input checkpoint"),
        ("ft_b", "is an input checkpoint"),
        ("base/x", "lies inside the base model"),
        ("cfg", "contains the merge config"),
    ],
)
def test_force_never_replaces_an_input_folder(tiny_zoo, tmp_path, capsys, where, words):
    import shutil
    from types import SimpleNamespace

    home = tmp_path / "pool"
    for path in (*tiny_zoo.checkpoints, tiny_zoo.base):
        shutil.copytree(path, home / path.name)
    zoo = SimpleNamespace(
        checkpoints=[home / p.name for p in tiny_zoo.checkpoints], base=home / "base"
    )
    config = home / "cfg" / "merge.yml"
    config.parent.mkdir()
    config.write_text(_yaml(zoo, "ties", "lambda: 1.0", ", density: 0.5"))
    for folder in (home, home / "ft_b", home / "cfg"):  # a marker does not make an input safe
        (folder / "merge_search.json").write_text('{"made_by": "merge-search"}')
        (folder / "mergekit_config.yml").write_text("merge_method: linear\n")
    before = _snapshot(home)
    assert main(["merge", str(config), str(home / where), "--force"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert _snapshot(home) == before


def test_force_replaces_a_merge_output_but_not_a_user_folder(tiny_zoo, tmp_path, capsys):
    config = tmp_path / "merge.yml"
    config.write_text(_yaml(tiny_zoo, "linear", "normalize: true", "", False))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["merge", str(config), str(out), "--force"]) == 2
    assert "not written by merge-search" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    out.rmdir()
    assert main(["merge", str(config), str(out)]) == 0
    assert main(["merge", str(config), str(out), "--force"]) == 0
    assert (out / "merge_search.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yml", "out"]
