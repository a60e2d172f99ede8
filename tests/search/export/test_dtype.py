"""Exports in the inputs' dtype: computed in float32, rounded once, ``--dtype`` for another."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from search.cli import main
from search.engine.materialize import merged_tensors
from search.engine.model import TOKENIZER_FILES
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.export.folder import export_merge
from tests.checkpoint_files import read_tensors
from tests.search.conftest import TinyZoo
from tests.search.report_fixtures import exportable_study

PLAN = MergePlan.create("task_arithmetic", [0.7, 0.2, 0.4], {"lambda": 0.9})


@pytest.fixture(scope="module")
def bf16_zoo(tiny_zoo, tmp_path_factory) -> TinyZoo:
    """The tiny pool stored in bfloat16, as most published checkpoints are."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("bf16_zoo")
    folders = []
    for source in (tiny_zoo.base, *tiny_zoo.checkpoints):
        folder = root / source.name
        folder.mkdir()
        tensors = {n: t.to(torch.bfloat16) for n, t in read_tensors(source).items()}
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config = json.loads((source / "config.json").read_text())
        config["dtype"] = "bfloat16"
        (folder / "config.json").write_text(json.dumps(config))
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)
        folders.append(folder)
    return TinyZoo(base=folders[0], checkpoints=tuple(folders[1:]), n_layers=tiny_zoo.n_layers)


def _written(folder):
    """The weights' dtypes as the safetensors files hold them, and the folder's YAML."""
    dtypes = {t.dtype for t in read_tensors(folder).values()}
    return dtypes, yaml.safe_load((folder / "mergekit_config.yml").read_text())


def test_a_bf16_pool_merged_in_float32_is_written_in_bf16_rounded_once(
    bf16_zoo, tiny_zoo, tmp_path
):
    # held in float32 as a study holds it: the export still writes the inputs' dtype
    pool = CheckpointPool.open(bf16_zoo.checkpoints, bf16_zoo.base, dtype="float32")
    assert pool.input_dtype == torch.bfloat16
    out = export_merge(PLAN, pool, tmp_path / "merged")
    dtypes, doc = _written(out)
    assert dtypes == {torch.bfloat16}
    assert (doc["dtype"], doc["out_dtype"]) == ("float32", "bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    card = (out / "README.md").read_text()
    assert "| dtype | bfloat16 (the inputs' dtype): computed in float32, rounded once |" in card
    # one rounding of the float32 merge (base included), not a sum of rounded terms
    exact = dict(merged_tensors(PLAN, pool, torch.float32))
    for name, tensor in read_tensors(out).items():
        assert torch.equal(tensor, exact[name].to(torch.bfloat16)), name
    # and a float32 pool is written in float32, as before
    f32 = export_merge(
        PLAN, CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base), tmp_path / "x"
    )
    assert _written(f32)[0] == {torch.float32}
    assert (
        "| dtype | float32 (the inputs' dtype), the precision the merge is computed in |"
        in (f32 / "README.md").read_text()
    )


def test_mergekit_reads_the_yaml_and_writes_the_same_bf16_weights(
    bf16_zoo, tmp_path, mergekit_merge
):
    pool = CheckpointPool.open(bf16_zoo.checkpoints, bf16_zoo.base)
    out = export_merge(PLAN, pool, tmp_path / "ours")
    theirs = mergekit_merge((out / "mergekit_config.yml").read_text(), tmp_path / "theirs")
    ours = read_tensors(out)
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert theirs[name].dtype == torch.bfloat16
        torch.testing.assert_close(tensor, theirs[name], rtol=2**-7, atol=1e-6, msg=name)


def test_merge_writes_the_inputs_dtype_unless_the_yaml_or_dtype_says_otherwise(
    bf16_zoo, tmp_path, capsys
):
    models = "".join(
        f"  - model: {p}\n    parameters: {{weight: 0.5}}\n" for p in bf16_zoo.checkpoints
    )
    config = tmp_path / "merge.yml"
    config.write_text(f"merge_method: linear\nmodels:\n{models}")
    assert main(["merge", str(config), str(tmp_path / "plain")]) == 0
    assert "bfloat16" in capsys.readouterr().out
    assert _written(tmp_path / "plain")[0] == {torch.bfloat16}
    assert main(["merge", str(config), str(tmp_path / "f32"), "--dtype", "float32"]) == 0
    dtypes, doc = _written(tmp_path / "f32")
    assert dtypes == {torch.float32} and "out_dtype" not in doc  # computed and written in float32
    config.write_text(config.read_text() + "dtype: float32\nout_dtype: float16\n")
    assert main(["merge", str(config), str(tmp_path / "f16")]) == 0
    assert _written(tmp_path / "f16")[0] == {torch.float16}
    config.write_text(config.read_text().replace("float16", "float8"))
    assert main(["merge", str(config), str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "out_dtype: expected one of float32, bfloat16, float16, float64, got 'float8'" in err
    assert not (tmp_path / "bad").exists()


def test_export_writes_a_bf16_study_in_bf16_and_dtype_chooses_another(bf16_zoo, tmp_path, capsys):
    config, _ = exportable_study(tmp_path, bf16_zoo, "bf16study")  # the study merges in float32
    assert main(["export", str(config), "--trial", "0", "--out", str(tmp_path / "a")]) == 0
    assert _written(tmp_path / "a")[0] == {torch.bfloat16}
    flags = ["--trial", "0", "--out", str(tmp_path / "b"), "--dtype", "float32"]
    assert main(["export", str(config), *flags]) == 0
    dtypes, doc = _written(tmp_path / "b")
    assert dtypes == {torch.float32} and doc["dtype"] == "float32"
    card = (tmp_path / "b" / "README.md").read_text()
    assert "| dtype | float32 (requested; the inputs are bfloat16), the precision" in card


def test_the_inputs_dtype_is_the_one_most_values_are_stored_in():
    from pathlib import Path

    from search.engine.dtypes import stored_dtype
    from search.engine.files import TensorInfo

    def table(**dtypes):  # name -> (dtype, n values)
        return {n: TensorInfo(Path("f"), (size,), code) for n, (code, size) in dtypes.items()}

    # a bfloat16 model that keeps its norms in float32 is bfloat16
    assert stored_dtype([table(w=("BF16", 4096), norm=("F32", 64))]) == "bfloat16"
    assert stored_dtype([table(w=("F16", 64)), table(w=("F32", 64))]) == "float32"  # tie: wider
    assert stored_dtype([table(w=("F8_E4M3", 4096), scale=("F32", 8))]) == "bfloat16"
