"""`merge-search merge` with `merge_method: fisher` and its calibration data (our YAML keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from search.cli import main
from search.engine.materialize import merged_tensors as _merged_tensors
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.strategies import get_method
from search.strategies.fisher.cache import fishers_from_file


def merged_tensors(plan, pool, dtype=None):
    """The engine's merged_tensors with the plan's method looked up as the study does (methods
    that strategies provide included)."""
    return _merged_tensors(plan, pool, dtype, get_method(plan.method))


TEXTS = "the cat sat on the mat.\none plus two is three.\nprint(a+b) shows the sum.\n"


def _yaml(zoo, parameters: str, method: str = "fisher") -> str:
    text = f"merge_method: {method}\nmodels:\n"
    for path, weight in zip(zoo.checkpoints, (0.5, 0.3, 0.4), strict=True):
        text += f"  - model: {path}\n    parameters: {{weight: {weight}}}\n"
    return text + f"parameters: {{{parameters}}}\ndtype: float32\n"


def test_a_fisher_yaml_merges_with_fishers_of_its_calibration_file(tiny_zoo, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXTS)
    config = tmp_path / "fisher.yml"
    config.write_text(_yaml(tiny_zoo, f"fisher_data: {calib}, fisher_examples: 2"))
    assert main(["merge", str(config), str(tmp_path / "out")]) == 0

    pool = CheckpointPool.open(tiny_zoo.checkpoints)
    fishers_from_file(pool, calib, 2)
    assert pool.extras("fisher").info["source"]["examples"] == 2
    expected = dict(merged_tensors(MergePlan.create("fisher", [0.5, 0.3, 0.4]), pool))
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == set(expected)
    for name, tensor in written.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    yaml_text = (tmp_path / "out" / "mergekit_config.yml").read_text()
    assert yaml_text.startswith("# note: mergekit 0.1.5 has no fisher method")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Fisher calibration" in card and str(calib) in card
    assert (tmp_path / "out" / "fisher_calibration.jsonl").read_text().count("\n") == 2


@pytest.mark.parametrize(
    ("parameters", "file_text", "expected"),
    [
        ("fisher_examples: 4", None, "parameters.fisher_data: required for merge_method fisher"),
        ("fisher_data: missing.jsonl", None, "data file 'missing.jsonl' does not exist"),
        ("fisher_data: {calib}", '{"content": "x"}\n', "expected an object with a string 'text'"),
        ("fisher_data: {calib}", "", "has no examples"),
        ("fisher_data: {calib}, fisher_examples: 0", TEXTS, "fisher_examples"),
    ],
    ids=["no-data", "missing-file", "no-text-field", "zero-examples", "zero-n"],
)
def test_bad_calibration_data_is_one_line_and_nothing_is_written(
    tiny_zoo, tmp_path, monkeypatch, capsys, parameters, file_text, expected
):
    monkeypatch.chdir(tmp_path)
    calib = tmp_path / "calib.jsonl"
    if file_text is not None:
        calib.write_text(file_text)
    config = tmp_path / "fisher.yml"
    config.write_text(_yaml(tiny_zoo, parameters.format(calib=calib)))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["merge", str(config), str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_fisher_keys_are_refused_for_other_methods(tiny_zoo, tmp_path, capsys):
    config = tmp_path / "linear.yml"
    config.write_text(_yaml(tiny_zoo, "normalize: true, fisher_data: x.txt", method="linear"))
    assert main(["merge", str(config), str(tmp_path / "out")]) == 2
    assert "parameter fisher_data is not used by linear" in capsys.readouterr().err
    assert not Path(tmp_path / "out").exists()
