"""Tiny real checkpoints for the merge engine tests: Llama folders written with safetensors.

``tiny_zoo`` (session scope) holds a base model and three fine-tune-like checkpoints (base +
a seeded random task vector), each a Hugging Face folder with config.json, generation config,
model.safetensors and a character tokenizer. ``ft_b`` is sharded (model.safetensors.index.json +
several shards). ``tiny_tied_zoo`` is the same with tied input/output embeddings (no lm_head in
the files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.checkpoint_files import read_tensors

VOCAB = ["<pad>", "<s>", "</s>", "<unk>", *"abcdefghijklmnopqrstuvwxyz0123456789 .,:;!?+-*/=()"]


@dataclass(frozen=True)
class TinyZoo:
    """Paths of a tiny pool: ``base`` and ``checkpoints`` (``checkpoints[1]`` is sharded)."""

    base: Path
    checkpoints: tuple[Path, ...]
    n_layers: int


def tiny_config(tied: bool = False, intermediate_size: int = 64, n_layers: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=intermediate_size,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def write_checkpoint(
    folder: Path,
    config,
    seed: int,
    base_state: dict | None = None,
    scale: float = 0.02,
    max_shard_size: str | None = None,
    tokenizer=None,
) -> dict:
    """Save a Llama (base init, or base + a seeded task vector) as an HF folder; return state."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if base_state is not None:
        state = {k: v + scale * torch.randn_like(v) for k, v in base_state.items()}
        model.load_state_dict(state, strict=False)
        if config.tie_word_embeddings:
            model.tie_weights()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _build(root: Path, tied: bool) -> TinyZoo:
    config = tiny_config(tied=tied)
    tok = tiny_tokenizer()
    base_state = write_checkpoint(root / "base", config, seed=0, tokenizer=tok)
    paths = []
    for i, name in enumerate(("ft_a", "ft_b", "ft_c")):
        shard = "50KB" if name == "ft_b" else None
        write_checkpoint(
            root / name,
            config,
            seed=10 + i,
            base_state=base_state,
            scale=0.02 * (1 + i),
            max_shard_size=shard,
            tokenizer=tok,
        )
        paths.append(root / name)
    return TinyZoo(base=root / "base", checkpoints=tuple(paths), n_layers=config.num_hidden_layers)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> TinyZoo:
    return _build(tmp_path_factory.mktemp("tiny_zoo"), tied=False)


@pytest.fixture(scope="session")
def tiny_tied_zoo(tmp_path_factory) -> TinyZoo:
    return _build(tmp_path_factory.mktemp("tiny_tied_zoo"), tied=True)


@pytest.fixture(scope="session")
def checkpoint_writer():
    """``write(folder, seed, base_state=None, scale=0.02, intermediate_size=64, tied=False)``."""

    def write(folder, seed, base_state=None, scale=0.02, intermediate_size=64, tied=False):
        config = tiny_config(tied=tied, intermediate_size=intermediate_size)
        return write_checkpoint(folder, config, seed, base_state=base_state, scale=scale)

    return write


@pytest.fixture(scope="session")
def mergekit_merge():
    """``merge(yaml_text, out_dir) -> {name: tensor}``: mergekit's real run_merge on CPU.

    mergekit is the ``compare`` extra (``make setup`` installs it): without it the comparison
    tests skip, except under CI, where a missing reference is an install step that broke.
    """
    import importlib.util

    if importlib.util.find_spec("mergekit") is None:
        message = "mergekit is not installed (pip install -e '.[compare]'; make setup does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)

    def merge(yaml_text: str, out_dir: Path) -> dict:
        import yaml
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        config = MergeConfiguration.model_validate(yaml.safe_load(yaml_text))
        options = MergeOptions(
            device="cpu", quiet=True, copy_tokenizer=False, write_model_card=False
        )
        run_merge(config, str(out_dir), options)
        return read_tensors(out_dir)

    return merge
