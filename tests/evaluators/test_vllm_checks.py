"""``eval.backend: vllm`` refused up front: one line naming the field and what to do.

The first test runs where vLLM is not installed (the base venv); the others need vLLM (its
config checks are vLLM's own) and run in ``.venv-vllm``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from evaluators import EvalSpec, ObjectiveSpec, TaskRef, check_objectives
from evaluators.spec import VllmSpec
from search.cli import main
from search.errors import UserError

OBJECTIVES = [ObjectiveSpec(name="code", tasks=(TaskRef(task="demo_code"),))]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_backend_vllm_without_vllm_says_how_to_install_it(demo_zoo):
    spec = EvalSpec(tasks_path=demo_zoo.tasks_path, backend="vllm")
    with pytest.raises(UserError, match=r"^eval.backend: vllm needs vLLM, which is not installed"):
        check_objectives(OBJECTIVES, spec, demo_zoo.base)


def test_backend_defaults_to_hf_and_vllm_settings_are_strict():
    assert EvalSpec().backend == "hf"
    with pytest.raises(ValueError, match="kv_cache"):
        VllmSpec(kv_cache=1)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VllmSpec(gpu_memory_utilization=1.5)


@pytest.fixture
def vllm_spec(vllm_zoo, vllm_available):
    def make(**settings: Any) -> EvalSpec:
        return EvalSpec(tasks_path=vllm_zoo.tasks_path, backend="vllm", vllm=VllmSpec(**settings))

    return make


@pytest.mark.vllm
def test_an_unknown_engine_argument_is_named(vllm_zoo, vllm_spec):
    spec = vllm_spec(engine_args={"max_num_sequences": 4})
    with pytest.raises(UserError, match=r"^eval.vllm.engine_args: max_num_sequences is not a vLLM"):
        check_objectives(OBJECTIVES, spec, vllm_zoo.base)
    spec = vllm_spec(engine_args={"dtype": "float16"})
    with pytest.raises(UserError, match=r"^eval.vllm.engine_args: dtype is set by merge-search"):
        check_objectives(OBJECTIVES, spec, vllm_zoo.base)


@pytest.mark.vllm
def test_an_architecture_vllm_does_not_know_is_named(vllm_zoo, vllm_spec, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(vllm_zoo.base, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UserError,
        match=r"^eval.backend: vllm: vLLM \S+ does not support the architecture of .*"
        r"\(NoSuchModelForCausalLM\); set eval.backend: hf",
    ):
        check_objectives(OBJECTIVES, vllm_spec(), folder)


@pytest.mark.vllm
def test_a_setting_vllm_rejects_is_named(vllm_zoo, vllm_spec):
    limit = json.loads((vllm_zoo.base / "config.json").read_text())["max_position_embeddings"]
    spec = vllm_spec(max_model_len=limit * 4)
    with pytest.raises(UserError, match=r"^eval.vllm.max_model_len: vLLM rejects"):
        check_objectives(OBJECTIVES, spec, vllm_zoo.base)
    check_objectives(OBJECTIVES, vllm_spec(max_model_len=limit), vllm_zoo.base)


@pytest.mark.vllm
def test_launch_refuses_a_rejected_setting_before_any_worker_starts(
    vllm_zoo, vllm_available, tmp_path: Path, capsys
):
    limit = json.loads((vllm_zoo.base / "config.json").read_text())["max_position_embeddings"]
    db = tmp_path / "bad.db"
    data = {
        "name": "bad",
        "storage": f"sqlite:///{db}",
        "checkpoints": [str(c) for c in vllm_zoo.checkpoints[:2]],
        "base_model": str(vllm_zoo.base),
        "objectives": [{"name": "code", "tasks": [{"task": "demo_code"}]}],
        "tasks_path": str(vllm_zoo.tasks_path),
        "eval": {"backend": "vllm", "vllm": {"max_model_len": limit * 4}},
        "device": "cpu",
    }
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["launch", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval.vllm.max_model_len: vLLM rejects" in err[0], err
    assert str(config) in err[0]
    assert not db.exists()  # nothing written, no worker started


@pytest.mark.vllm
def test_a_head_size_vllm_cpu_does_not_run_is_named(demo_zoo, vllm_spec):
    config = json.loads((demo_zoo.base / "config.json").read_text())
    size = config["hidden_size"] // config["num_attention_heads"]  # 16 in the tiny demo pool
    with pytest.raises(
        UserError,
        match=rf"^eval.backend: vllm: vLLM's CPU attention does not run the head size {size} ",
    ):
        check_objectives(OBJECTIVES, vllm_spec(), demo_zoo.base)


def _config_folder(folder: Path, config: Any) -> Path:
    config.save_pretrained(folder)  # config.json only: the head-size check reads nothing else
    return folder


def test_head_size_is_read_through_each_architectures_own_config_names(tmp_path):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    from evaluators.vllm_checks import head_size

    gpt2 = _config_folder(tmp_path / "gpt2", GPT2Config(n_embd=96, n_head=4, n_layer=2))
    assert "head_dim" not in json.loads((gpt2 / "config.json").read_text())  # n_embd / n_head
    assert head_size(gpt2) == 24
    qwen2 = Qwen2Config(hidden_size=96, num_attention_heads=4, num_key_value_heads=2)
    assert head_size(_config_folder(tmp_path / "qwen2", qwen2)) == 24
    llama = LlamaConfig(hidden_size=96, num_attention_heads=4, head_dim=64)  # set, not derived
    assert head_size(_config_folder(tmp_path / "llama", llama)) == 64
    (tmp_path / "none").mkdir()
    assert head_size(tmp_path / "none") is None


def test_a_gpt2_head_size_the_cpu_attention_does_not_run_gets_the_one_line_refusal(tmp_path):
    from transformers import GPT2Config, LlamaConfig

    from evaluators.vllm_checks import check_head_size

    supported = [32, 64, 80, 96, 112, 128, 160, 192, 224, 256]  # vLLM's CPU attention, 0.1x
    gpt2 = _config_folder(tmp_path / "gpt2", GPT2Config(n_embd=96, n_head=4, n_layer=2))
    with pytest.raises(UserError) as info:
        check_head_size(gpt2, supported)
    assert str(info.value) == (
        f"eval.backend: vllm: vLLM's CPU attention does not run the head size 24 of {gpt2} "
        f"(it runs {', '.join(map(str, supported))}); set eval.backend: hf"
    )
    fine = LlamaConfig(hidden_size=128, num_attention_heads=4)
    check_head_size(_config_folder(tmp_path / "llama", fine), supported)  # 32: runs


@pytest.mark.vllm
def test_a_gpt2_head_size_vllm_cpu_does_not_run_is_named(vllm_spec, tmp_path):
    from transformers import GPT2Config

    gpt2 = GPT2Config(n_embd=96, n_head=4, n_layer=2, architectures=["GPT2LMHeadModel"])
    folder = _config_folder(tmp_path / "gpt2", gpt2)
    with pytest.raises(UserError, match=r"does not run the head size 24 "):
        check_objectives(OBJECTIVES, vllm_spec(), folder)
