"""Per-trial merge speed against the device's copy bandwidth and against mergekit's on-disk merge.

    python bench/merge_speed.py                       # CPU: K=8 Llama-shaped ~134M-parameter models
    python bench/merge_speed.py --hidden 256 --layers 2 --vocab 4096   # a quick small run
    python bench/merge_speed.py --device cuda         # GPU: ~1B-parameter models by default

In one run it
1. writes K + 1 random Llama-shaped checkpoints (bf16 safetensors) into --workdir (kept and
   reused by later runs with the same sizes),
2. measures the copy bandwidth of the device (one large tensor copy: read + write),
3. opens them as a CheckpointPool (bf16 storage), loads the resident model, and times
   ``materialize`` of a linear merge (float32 accumulation) with fresh weights per trial,
4. runs mergekit's ``run_merge`` (in a subprocess, to disk) for the same linear merge,
and prints the fraction of copy bandwidth reached ((K+1) x bytes per model / time / bandwidth),
the speed-up over mergekit, and peak memory against pool + one model + the largest tensor.
Targets: >= 50 % of copy bandwidth on the CPU (>= 80 % on an H100), >= 50x mergekit,
peak <= pool + one model + largest tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402

GB = 1e9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--k", type=int, default=8, help="checkpoints merged per trial (default: 8)")
    p.add_argument("--hidden", type=int, default=None, help="hidden size (cpu 768, cuda 2048)")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (cpu 12, cuda 16)")
    p.add_argument("--intermediate", type=int, default=None, help="MLP size (cpu 2048, cuda 5632)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="bfloat16", help="storage dtype (default: bfloat16)")
    p.add_argument("--kernel", default="auto", help="auto, gemv, compiled or chunked")
    p.add_argument("--trials", type=int, default=5, help="timed trials after one warm-up")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "merge_speed_bench"))
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's; use 1 on a busy machine)",
    )
    p.add_argument("--skip-mergekit", action="store_true")
    args = p.parse_args(argv)
    big = args.device.startswith("cuda")
    args.hidden = args.hidden or (2048 if big else 768)
    args.layers = args.layers or (16 if big else 12)
    args.intermediate = args.intermediate or (5632 if big else 2048)
    return args


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so earlier phases do not count; Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last reset (VmHWM), else over the process's life (ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_checkpoints(args, root: Path) -> list[Path]:
    """K + 1 folders (base + K) of random bf16 weights; reused when the sizes match."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    heads = max(1, args.hidden // 64)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    stamp = {
        "k": args.k,
        "hidden": args.hidden,
        "layers": args.layers,
        "intermediate": args.intermediate,
        "vocab": args.vocab,
        "dtype": args.dtype,
    }
    folders = [root / "base", *(root / f"ckpt{i}" for i in range(args.k))]
    marker = root / "sizes.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folders
    with torch.device("meta"):
        shapes = {
            n: t.shape for n, t in AutoModelForCausalLM.from_config(config).state_dict().items()
        }
    dtype = getattr(torch, args.dtype)
    gen_device = "cuda" if args.device.startswith("cuda") else "cpu"
    gen = torch.Generator(gen_device).manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for i, folder in enumerate(folders):
        folder.mkdir(exist_ok=True)
        tensors = {}
        for name, shape in shapes.items():
            scale = 0.02 if i == 0 else 0.021  # fine-tunes: a different draw, similar scale
            t = torch.randn(shape, generator=gen, device=gen_device) * scale
            tensors[name] = t.to(dtype).cpu()
            del t
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        config.save_pretrained(folder)
        print(f"  wrote {folder}", flush=True)
    marker.write_text(json.dumps(stamp))
    return folders


def copy_bandwidth(device: torch.device, n_bytes: int, repeats: int = 5) -> float:
    """Bytes moved per second (read + write) by one large tensor copy."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * n_bytes / best


def warm_up_kernel(pool, k: int, device: torch.device) -> float:
    """Run the weighted-sum kernel once on small tensors (imports and compiles it).

    Also imports the model code, so that the memory baseline taken next holds all the code and
    the growth after it is model data.
    """
    import transformers.models.llama.modeling_llama  # noqa: F401

    start = time.perf_counter()
    stack = torch.randn(k, 1 << 16, device=device).to(pool.dtype)
    out = torch.empty(1 << 16, dtype=pool.dtype, device=device)
    pool.weighted_sum(out, stack, torch.full((k,), 1.0 / k, device=device))
    sync(device)
    return time.perf_counter() - start


def time_trials(pool, model, k: int, trials: int, device: torch.device) -> list[float]:
    from search.engine.materialize import materialize
    from search.engine.plan import MergePlan

    rng = torch.Generator().manual_seed(1)
    times = []
    for trial in range(trials + 1):  # the first one warms up (and compiles the kernel)
        weights = torch.rand(k, generator=rng).tolist()
        plan = MergePlan.create("linear", weights, {"normalize": True})
        sync(device)
        start = time.perf_counter()
        materialize(plan, pool, model)
        sync(device)
        elapsed = time.perf_counter() - start
        if trial == 0:
            print(f"  warm-up trial (kernel {pool.weighted_sum.kind}): {elapsed:.2f} s", flush=True)
            check_one_tensor(pool, model, weights)
        else:
            times.append(elapsed)
    return times


def check_one_tensor(pool, model, weights) -> None:
    """The timed merge is right: one tensor against a float64 reference."""
    name = "model.layers.0.self_attn.q_proj.weight"
    total = sum(weights)
    part = slice(0, 4096)  # a slice: the check must not add to the peak memory measured
    exact = sum(
        w / total * pool.stack(name)[i].reshape(-1)[part].double() for i, w in enumerate(weights)
    )
    got = model.state_dict()[name].reshape(-1)[part].double()
    err = float(((got - exact).abs() / exact.abs().clamp_min(1e-6)).median())
    if err > 2**-8:
        raise SystemExit(f"merged tensor {name} is wrong (median relative error {err:.2e})")


MERGEKIT_SCRIPT = """
import json, sys, time, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
cfg, out, device = sys.argv[1], sys.argv[2], sys.argv[3]
config = MergeConfiguration.model_validate(yaml.safe_load(open(cfg)))
start = time.perf_counter()
run_merge(config, out, MergeOptions(device=device, quiet=True, copy_tokenizer=False))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def time_mergekit(folders: list[Path], args, workdir: Path) -> float:
    import yaml

    weights = torch.rand(args.k, generator=torch.Generator().manual_seed(2)).tolist()
    config = {
        "merge_method": "linear",
        "models": [
            {"model": str(f), "parameters": {"weight": w}}
            for f, w in zip(folders[1:], weights, strict=True)
        ],
        "parameters": {"normalize": True},
        "dtype": args.dtype,
    }
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cfg = Path(tmp) / "linear.yml"
        cfg.write_text(yaml.safe_dump(config))
        device = "cuda" if args.device.startswith("cuda") else "cpu"
        env = dict(os.environ)
        if args.threads:  # the same thread count as our side
            env["OMP_NUM_THREADS"] = str(args.threads)
        proc = subprocess.run(
            [sys.executable, "-c", MERGEKIT_SCRIPT, str(cfg), str(Path(tmp) / "out"), device],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
    if proc.returncode != 0:
        raise SystemExit(f"mergekit failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def main(argv=None) -> int:
    args = parse_args(argv)
    from search.engine.pool import CheckpointPool, resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    print(
        f"checkpoints in {workdir} (K={args.k}, hidden {args.hidden}, {args.layers} layers)",
        flush=True,
    )
    folders = write_checkpoints(args, workdir)

    pool = CheckpointPool.open(
        folders[1:], dtype=args.dtype, device=str(device), kernel=args.kernel
    )
    model_bytes = pool.model_bytes()
    item = torch.tensor([], dtype=pool.dtype).element_size()
    largest = max(torch.Size(s).numel() for s in pool.shapes.values()) * item
    n_params = model_bytes // item

    bw_before = copy_bandwidth(device, max(model_bytes, 256 * 2**20))
    warm_s = warm_up_kernel(pool, args.k, device)
    baseline_rss = rss_bytes()  # process + libraries + the compiled kernel's code, no model data
    if not reset_peak_rss():
        print("  (cannot reset the peak-RSS mark: the peak below may come from earlier phases)")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline_cuda = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    model, _ = pool.load_model(tokenizer=False)
    pool.load()
    load_s = time.perf_counter() - start
    times = time_trials(pool, model, args.k, args.trials, device)
    peak_rss = peak_rss_bytes()
    bw_after = copy_bandwidth(device, max(model_bytes, 256 * 2**20))
    bandwidth = (bw_before + bw_after) / 2

    moved = (args.k + 1) * model_bytes
    best, median = min(times), statistics.median(times)
    allowed = pool.resident_bytes() + model_bytes + largest
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print()
    print(
        f"model: {n_params / 1e6:.1f} M parameters, {pool.dtype}, "
        f"{model_bytes / GB:.3f} GB per model; K = {args.k}; device {device}"
        + (f" ({threads} threads)" if threads else "")
        + f"; kernel {pool.weighted_sum.kind} (warm-up/compile {warm_s:.1f} s)"
        + f"; pool load {load_s:.1f} s"
    )
    print(
        f"copy bandwidth: {bandwidth / GB:.2f} GB/s "
        f"(before {bw_before / GB:.2f}, after {bw_after / GB:.2f})"
    )
    print(
        f"materialize linear, fp32 accumulation: median {median * 1e3:.1f} ms, "
        f"best {best * 1e3:.1f} ms over {len(times)} trials"
    )
    target_bw = 0.8 if device.type == "cuda" else 0.5
    print(
        f"  fraction of copy bandwidth: median {moved / median / bandwidth:.2f}, "
        f"best {moved / best / bandwidth:.2f} (target >= {target_bw:.2f})"
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - baseline_cuda
        print(
            f"peak CUDA memory: {peak / GB:.3f} GB; pool + one model + largest tensor "
            f"{allowed / GB:.3f} GB -> ratio {peak / allowed:.3f} (target <= 1)"
        )
    print(
        f"peak RSS: {peak_rss / GB:.3f} GB; before loading any model data "
        f"{baseline_rss / GB:.3f} GB (process, libraries, compiled kernel); "
        f"growth {(peak_rss - baseline_rss) / GB:.3f} GB"
    )
    if device.type == "cpu":
        print(
            f"  pool {pool.resident_bytes() / GB:.3f} + one model {model_bytes / GB:.3f} + largest "
            f"tensor {largest / GB:.3f} = {allowed / GB:.3f} GB -> growth / that = "
            f"{(peak_rss - baseline_rss) / allowed:.3f} (target <= 1)"
        )
    if not args.skip_mergekit:
        print("running mergekit run_merge (subprocess, to disk) ...", flush=True)
        mk = time_mergekit(folders, args, workdir)
        print(
            f"mergekit run_merge: {mk:.2f} s -> speed-up per trial: median {mk / median:.0f}x, "
            f"best {mk / best:.0f}x (target >= 50x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
