"""CheckpointPool: opening, checks before any work, resident stacks, layer groups, model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import xxhash

from search.engine.model import load_model, tokenizer_path
from search.engine.pool import CheckpointPool
from search.errors import UserError
from tests.checkpoint_files import read_tensors


def test_open_names_paths_and_stacks_match_the_files(tiny_zoo):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base)
    assert pool.names == ("ft_a", "ft_b", "ft_c")
    assert pool.paths == tiny_zoo.checkpoints
    assert pool.base_path == tiny_zoo.base
    assert pool.device == torch.device("cpu") and pool.dtype == torch.float32
    assert pool.n_layers == tiny_zoo.n_layers
    files = [read_tensors(p) for p in tiny_zoo.checkpoints]  # ft_b is sharded
    assert set(pool.tensor_names) == set(files[0]) == set(files[1])
    for name in pool.tensor_names:
        stack = pool.stack(name)
        assert stack.shape == (3, *files[0][name].shape)
        for k in range(3):
            assert torch.equal(stack[k], files[k][name])
    base = read_tensors(tiny_zoo.base)
    assert torch.equal(pool.base_tensor("model.norm.weight"), base["model.norm.weight"])


def test_base_is_loaded_only_when_asked(tiny_zoo):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base)
    assert pool.resident_bytes() == 0  # nothing read by open
    pool.load()
    assert pool.resident_bytes() == 3 * pool.model_bytes()
    pool.load(base=True)
    assert pool.resident_bytes() == 4 * pool.model_bytes()


def test_dtype_is_applied_to_resident_tensors(tiny_zoo):
    pool = CheckpointPool.open(tiny_zoo.checkpoints[:2], dtype="bf16")
    assert pool.dtype == torch.bfloat16
    assert pool.stack("lm_head.weight").dtype == torch.bfloat16
    assert pool.model_bytes() * 2 == CheckpointPool.open(tiny_zoo.checkpoints[:2]).model_bytes()


def test_fingerprint_is_json_and_follows_the_files(tiny_zoo, tmp_path, checkpoint_writer):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base)
    fp = pool.identity.fingerprint()
    assert json.loads(json.dumps(fp)) == fp
    assert [c["name"] for c in fp["checkpoints"]] == list(pool.names)
    assert fp["base"]["name"] == "base"
    for entry, path in zip(fp["checkpoints"], tiny_zoo.checkpoints, strict=True):
        assert entry["bytes"] == sum(f.stat().st_size for f in path.glob("*.safetensors"))
        assert len(entry["header_sha256"]) == 64
    # A retrained checkpoint (same names and shapes, other values) changes the fingerprint.
    retrained = tmp_path / "ft_a"
    checkpoint_writer(retrained, seed=99, base_state=read_tensors(tiny_zoo.base))
    other = CheckpointPool.open(
        [retrained, *tiny_zoo.checkpoints[1:]], tiny_zoo.base
    ).identity.fingerprint()
    assert other["checkpoints"][0] != fp["checkpoints"][0]
    assert other["checkpoints"][1:] == fp["checkpoints"][1:]


def test_duplicate_folder_names_are_made_unique(tiny_zoo, tmp_path, checkpoint_writer):
    other = tmp_path / "x" / "ft_a"
    checkpoint_writer(other, seed=98, base_state=read_tensors(tiny_zoo.base))
    pool = CheckpointPool.open([tiny_zoo.checkpoints[0], other])
    assert pool.names == ("ft_a", "ft_a-2")


def test_a_checkpoint_listed_twice_is_one_line(tiny_zoo, tmp_path, monkeypatch):
    a, b = tiny_zoo.checkpoints[:2]
    monkeypatch.chdir(a.parent)
    with pytest.raises(UserError, match=r"checkpoints: ft_a is listed twice \(also as .*ft_a"):
        CheckpointPool.open([a, b, "ft_a"])
    link = tmp_path / "link"
    link.symlink_to(a)
    with pytest.raises(UserError, match="listed twice"):
        CheckpointPool.open([a, link])
    copy = tmp_path / "copy" / "ft_a"
    shutil.copytree(a, copy)
    with pytest.raises(UserError, match=f"{copy} holds the same weights as {a}"):
        CheckpointPool.open([a, b, copy])
    sharded = tmp_path / "copy" / "ft_b"  # sharded: compared over all its files
    shutil.copytree(b, sharded)
    with pytest.raises(UserError, match="holds the same weights"):
        CheckpointPool.open([b, sharded])


def _flip_middle_byte(file: Path) -> None:
    """Change one byte in the middle of the file's data, same size, mtime set back."""
    before = file.stat()
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert file.stat().st_size == before.st_size


@pytest.mark.parametrize("placement", ["device", "disk"])
def test_a_tensor_changed_in_the_middle_changes_the_fingerprint(tiny_zoo, tmp_path, placement):
    folder = tmp_path / "ft_a"
    shutil.copytree(tiny_zoo.checkpoints[0], folder)
    pool = CheckpointPool.open([folder, tiny_zoo.checkpoints[2]], placement=placement).load()
    before = pool.identity.fingerprint()
    entry = before["checkpoints"][0]
    assert (
        entry["content_xxh3_128"]
        == xxhash.xxh3_128((folder / "model.safetensors").read_bytes()).hexdigest()
    )
    _flip_middle_byte(folder / "model.safetensors")
    with pytest.raises(UserError, match=f"{folder / 'model.safetensors'}: changed since the pool"):
        pool.identity.check_unchanged()  # what a worker runs before each trial
    again = CheckpointPool.open([folder, tiny_zoo.checkpoints[2]], placement=placement)
    after = again.load().identity.fingerprint()
    assert after["checkpoints"][0]["content_xxh3_128"] != entry["content_xxh3_128"]
    assert after["checkpoints"][0]["header_sha256"] == entry["header_sha256"]
    assert after["checkpoints"][1] == before["checkpoints"][1]
    again.identity.check_unchanged()


def test_digests_are_cached_by_stamp_and_hashed_again_after_a_write(tiny_zoo, tmp_path):
    from search.engine.digests import DigestCache, FileScan, FileStamp

    folder = tmp_path / "ft_c"
    shutil.copytree(tiny_zoo.checkpoints[2], folder)
    file = folder / "model.safetensors"
    first = CheckpointPool.open([folder], placement="disk").identity.fingerprint()
    cache = DigestCache()
    assert cache.get(file, FileStamp.of(file)).digest == first["checkpoints"][0]["content_xxh3_128"]
    cache.put(file, FileStamp.of(file), FileScan("0" * 64))  # a cached digest is believed while
    cache.save()  # the stamp matches: the file is not read again
    fp = CheckpointPool.open([folder], placement="disk").identity.fingerprint()
    assert fp["checkpoints"][0]["content_xxh3_128"] == "0" * 64
    _flip_middle_byte(file)  # the ctime moved: hashed again
    fp = CheckpointPool.open([folder], placement="disk").identity.fingerprint()
    assert (
        fp["checkpoints"][0]["content_xxh3_128"] == xxhash.xxh3_128(file.read_bytes()).hexdigest()
    )


def test_layer_groups_split_blocks_embeddings_first_head_last(tiny_zoo):
    pool = CheckpointPool.open(tiny_zoo.checkpoints)
    assert pool.group_of("model.embed_tokens.weight", 2) == 0
    assert pool.group_of("model.layers.0.mlp.up_proj.weight", 2) == 0
    assert pool.group_of("model.layers.1.self_attn.q_proj.weight", 2) == 0
    assert pool.group_of("model.layers.2.self_attn.q_proj.weight", 2) == 1
    assert pool.group_of("model.layers.3.input_layernorm.weight", 2) == 1
    assert pool.group_of("model.norm.weight", 2) == 1
    assert pool.group_of("lm_head.weight", 2) == 1
    assert [pool.group_of(f"model.layers.{i}.mlp.up_proj.weight", 4) for i in range(4)] == [
        0,
        1,
        2,
        3,
    ]
    assert {pool.group_of(n, 1) for n in pool.tensor_names} == {0}


def test_load_model_uses_base_weights_and_tokenizer(tiny_zoo):
    pool = CheckpointPool.open(tiny_zoo.checkpoints, tiny_zoo.base)
    model, tok = load_model(pool)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    base = read_tensors(tiny_zoo.base)
    assert torch.equal(
        model.state_dict()["model.layers.0.mlp.up_proj.weight"],
        base["model.layers.0.mlp.up_proj.weight"],
    )
    assert tok("abc")["input_ids"] == [4, 5, 6]


def test_tokenizer_falls_back_to_first_checkpoint(tiny_zoo, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_zoo.base, base)
    for f in base.glob("tokenizer*"):
        f.unlink()
    pool = CheckpointPool.open(tiny_zoo.checkpoints, base)
    assert tokenizer_path(pool) == tiny_zoo.checkpoints[0]


# -- errors: one line, before any work ---------------------------------------------------------


def _open_error(*args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        CheckpointPool.open(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shape_mismatch_names_folder_tensor_and_both_shapes(tiny_zoo, tmp_path, checkpoint_writer):
    odd = tmp_path / "wide"
    checkpoint_writer(odd, seed=3, intermediate_size=48)
    message = _open_error([tiny_zoo.checkpoints[0], odd])
    assert str(odd) in message
    assert "model.layers.0.mlp.down_proj.weight" in message
    assert "[32, 48]" in message and "[32, 64]" in message


def test_missing_shard_is_named(tiny_zoo, tmp_path):
    broken = tmp_path / "ft_b"
    shutil.copytree(tiny_zoo.checkpoints[1], broken)
    (broken / "model-00002-of-00004.safetensors").unlink()
    message = _open_error([tiny_zoo.checkpoints[0], broken])
    assert "model-00002-of-00004.safetensors" in message and "missing" in message


def test_unreadable_header_is_named(tiny_zoo, tmp_path):
    broken = tmp_path / "junk"
    shutil.copytree(tiny_zoo.checkpoints[0], broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    message = _open_error([tiny_zoo.checkpoints[0], broken])
    assert "model.safetensors" in message and "unreadable safetensors header" in message


def test_architecture_mismatch_is_named(tiny_zoo, tmp_path):
    other = tmp_path / "other_arch"
    shutil.copytree(tiny_zoo.checkpoints[0], other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "mistral"
    (other / "config.json").write_text(json.dumps(config))
    message = _open_error([tiny_zoo.checkpoints[0], other])
    assert "model_type" in message and "mistral" in message and "llama" in message


def test_missing_tensor_is_named(tiny_zoo, tmp_path):
    from safetensors.torch import save_file

    partial = tmp_path / "partial"
    shutil.copytree(tiny_zoo.checkpoints[0], partial)
    tensors = read_tensors(partial)
    del tensors["model.norm.weight"]
    save_file(tensors, str(partial / "model.safetensors"))
    message = _open_error([tiny_zoo.checkpoints[0], partial])
    assert "model.norm.weight" in message and "missing" in message


def test_missing_folder_config_or_weights(tiny_zoo, tmp_path):
    assert "not found" in _open_error([tmp_path / "nope"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.json" in _open_error([empty])
    (empty / "config.json").write_text("{}")
    assert "model.safetensors" in _open_error([empty])
    assert "at least one" in _open_error([])


def test_bad_device_or_dtype(tiny_zoo):
    assert "dtype" in _open_error(tiny_zoo.checkpoints, dtype="int8")
    assert "device" in _open_error(tiny_zoo.checkpoints, device="tpu")
    if not torch.cuda.is_available():
        assert "CUDA" in _open_error(tiny_zoo.checkpoints, device="cuda")


def test_truncated_checkpoint_is_refused_at_open_naming_file_and_tensor(tiny_zoo, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(tiny_zoo.checkpoints[0], cut)
    file = cut / "model.safetensors"
    header_end = 8 + int.from_bytes(file.read_bytes()[:8], "little")
    last = max(_read_offsets(file).items(), key=lambda kv: kv[1][1])[0]  # the tensor at the end
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.truncate(size - 100)  # header intact, the last tensor's data cut short
    assert file.stat().st_size > header_end
    message = _open_error([tiny_zoo.checkpoints[1], cut])
    assert str(file) in message and f"tensor {last} " in message and "truncated" in message
    assert str(size - 100) in message


def test_offsets_that_do_not_match_shape_and_dtype_are_refused(tiny_zoo, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_zoo.checkpoints[0], odd)
    file = odd / "model.safetensors"
    data = file.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["model.norm.weight"]["shape"] = [16]  # 32 floats stored, 16 declared
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (length - len(raw))  # same header length: the data offsets stay valid
    file.write_bytes(data[:8] + raw + data[8 + length :])
    message = _open_error([tiny_zoo.checkpoints[1], odd])
    assert str(file) in message and "model.norm.weight" in message
    assert "128 bytes" in message and "[16]" in message and "needs 64" in message


def _read_offsets(file) -> dict[str, tuple[int, int]]:
    data = file.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}


def test_bad_placement_is_a_user_error(tiny_zoo):
    assert "pool: expected one of auto, device, host, disk" in _open_error(
        tiny_zoo.checkpoints, placement="ram"
    )
