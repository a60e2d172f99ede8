"""Per-trial merge speed and memory per pool placement, against the bandwidth that bounds each.

    python bench/merge_speed.py                          # CPU: K=8 ~134M-parameter bf16 models
    python bench/merge_speed.py --pool disk --params 30e6 --k 4     # one placement, smaller
    python bench/merge_speed.py --device cuda            # GPU: ~1B-parameter models by default

In one run it
1. writes K + 1 random Llama-shaped checkpoints (bf16 safetensors) into --workdir (kept and
   reused by later runs with the same sizes);
2. measures, in this process, the bandwidths that bound a trial: the device's copy bandwidth (one
   large tensor copy: read + write), the warm page-cache read of the K files (through the same
   memory maps the ``disk`` placement reads), and on CUDA the page-locked host→device copy;
3. for each placement (``--pool``, default all three), in a child process of its own so that
   peak memories do not mix: opens the pool, loads the resident model and the pool, times
   ``materialize`` of a linear merge (fp32 accumulation) with fresh weights per trial, and reads
   the peak RSS (VmHWM) and the peak CUDA memory of the trials;
4. in another child, the resident load with one reading thread against several, from a warm and
   from a cold page cache (``posix_fadvise(DONTNEED)`` evicts the files first), and the ``disk``
   read with maps kept open against reopening the file per tensor; and the cost of the
   whole-content fingerprint: the warm load that hashes every file as it reads it against the
   same load once the digests are cached (by path, size, mtime, ctime, inode), and the hashing
   alone;
5. runs mergekit's ``run_merge`` (in a subprocess, to disk) for the same linear merge.

Fractions of the bound (time the bound allows / measured time):
- ``device``: (K + 1) x model bytes moved at the device's copy bandwidth;
- ``host``: on the CPU the ``device`` placement itself (the same memory, the same code); on CUDA
  the K slices over the host→device copy (or the device bound, if slower);
- ``disk``: the K slices read from the warm page cache.
Targets: ``device`` >= 0.5 of copy bandwidth on the CPU (>= 0.8 on a GPU); ``host`` within 1.5x
of its bound on a GPU; ``disk`` trial within 3x of ``host`` and its peak memory <= 1.5 x one
model on the CPU; >= 50x mergekit.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from search.engine.model import load_model

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

import torch  # noqa: E402

GB = 1e9
PLACEMENTS = ("device", "host", "disk")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--pool",
        default="all",
        choices=("all", *PLACEMENTS),
        help="placement(s) to measure (default: all, each in its own child process)",
    )
    p.add_argument("--k", type=int, default=8, help="checkpoints merged per trial (default: 8)")
    p.add_argument(
        "--params",
        type=float,
        default=None,
        help="parameters per model (sets the number of blocks; e.g. 30e6)",
    )
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
    p.add_argument("--skip-load", action="store_true", help="skip the load-time comparison")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    big = args.device.startswith("cuda")
    args.hidden = args.hidden or (2048 if big else 768)
    args.intermediate = args.intermediate or (5632 if big else 2048)
    if args.params:
        per_block = 4 * args.hidden**2 + 3 * args.hidden * args.intermediate + 2 * args.hidden
        outside = 2 * args.vocab * args.hidden + args.hidden
        args.layers = max(1, round((args.params - outside) / per_block))
    args.layers = args.layers or (16 if big else 12)
    return args


# ------------------------------------------------------------------------------ measurements


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset Linux's peak-RSS mark (VmHWM) so earlier phases do not count; Linux only."""
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


def h2d_bandwidth(device: torch.device, n_bytes: int, repeats: int = 5) -> float:
    """Bytes per second of a page-locked host → device copy."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, pin_memory=True).uniform_()
    dst = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return n_bytes / best


def read_bandwidth(folders: list[Path], dtype: torch.dtype, keep_open: bool = True) -> float:
    """Bytes per second of the ``disk`` placement's read path alone (warm page cache).

    Every tensor of the K checkpoints goes through a DiskStore's memory maps into its block
    buffer, as a trial reads it, with no merge; the best of three passes (the first warms up).
    """
    from search.engine.placement import build_store, split_ranges
    from search.engine.pool import CheckpointPool

    pool = CheckpointPool.open(folders, dtype=dtype, placement="disk")
    tables = pool.checkpoint_store.members
    store = build_store("disk", tables, pool.shapes, pool.dtype, pool.device, keep_open=keep_open)
    store.load()
    requests = [
        (n, a, b)
        for n, s in pool.shapes.items()
        for a, b in split_ranges(torch.Size(s).numel(), store.block)
    ]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _block in store.stream(requests):
            pass
        best = min(best, time.perf_counter() - start)
    store.close()
    return len(folders) * pool.model_bytes() / best


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


def time_trials(pool, model, k: int, trials: int, device: torch.device):
    from search.engine.materialize import materialize
    from search.engine.plan import MergePlan

    rng = torch.Generator().manual_seed(1)
    times, last = [], None
    for trial in range(trials + 1):  # the first one warms up (and compiles the kernel)
        weights = torch.rand(k, generator=rng).tolist()
        plan = MergePlan.create("linear", weights, {"normalize": True})
        sync(device)
        start = time.perf_counter()
        materialize(plan, pool, model)
        sync(device)
        elapsed = time.perf_counter() - start
        if trial:
            times.append(elapsed)
        last = weights
    return times, last


def check_one_tensor(pool, model, weights) -> None:
    """The timed merge is right: one tensor against a float64 reference."""
    name = "model.layers.0.self_attn.q_proj.weight"
    total = sum(weights)
    part = slice(0, 4096)
    stack = pool.stack(name)
    exact = sum(w / total * stack[i].reshape(-1)[part].double() for i, w in enumerate(weights))
    got = model.state_dict()[name].reshape(-1)[part].double()
    err = float(((got - exact).abs() / exact.abs().clamp_min(1e-6)).median())
    if err > 2**-8:
        raise SystemExit(f"merged tensor {name} is wrong (median relative error {err:.2e})")


# ------------------------------------------------------------------------------------- children


def run_placement(args, folders: list[Path]) -> dict:
    """One placement, in this (child) process: load, time trials, read peak memories."""
    from search.engine.pool import CheckpointPool

    placement = args.child
    if args.threads:
        torch.set_num_threads(args.threads)
    pool = CheckpointPool.open(
        folders[1:], dtype=args.dtype, device=args.device, kernel=args.kernel, placement=placement
    )
    device = pool.device
    warm_s = warm_up_kernel(pool, args.k, device)
    gc.collect()
    baseline = rss_bytes()  # process + libraries + the compiled kernel's code, no model data
    start = time.perf_counter()
    model, _ = load_model(pool, tokenizer=False)
    model_s = time.perf_counter() - start
    load_peak = peak_rss_bytes()
    reset_peak_rss()  # the trials' peak from here (the model load maps its file transiently)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    pool.load()
    load_s = time.perf_counter() - start
    times, weights = time_trials(pool, model, args.k, args.trials, device)
    peak = peak_rss_bytes()
    cuda_peak = (
        torch.cuda.max_memory_allocated(device) - cuda_base if device.type == "cuda" else None
    )
    check_one_tensor(pool, model, weights)
    item = torch.tensor([], dtype=pool.dtype).element_size()
    return {
        "placement": placement,
        "kernel": pool.weighted_sum.kind,
        "warm_s": warm_s,
        "model_s": model_s,
        "load_s": load_s,
        "times": times,
        "baseline_rss": baseline,
        "peak_rss": peak,
        "load_peak_rss": load_peak,
        "cuda_peak": cuda_peak,
        "resident": pool.resident_bytes(),
        "model_bytes": pool.model_bytes(),
        "largest": max(torch.Size(s).numel() for s in pool.shapes.values()) * item,
        "block_bytes": pool.checkpoint_store.block * args.k * item,
        "threads": torch.get_num_threads(),
    }


def run_load(args, folders: list[Path]) -> dict:
    """Resident load with 1 thread vs several, warm and cold; disk read kept open vs reopened."""
    from search.engine.pool import LOAD_THREADS, CheckpointPool

    threads = min(LOAD_THREADS, os.cpu_count() or 1)
    out: dict = {"threads": threads}
    for cache in ("warm", "cold"):
        for n in (1, threads):
            if cache == "cold":
                evict(folders)
            # no digest known: the load hashes every file as it reads it (the fingerprint)
            os.environ["MERGE_SEARCH_CACHE"] = tempfile.mkdtemp(prefix="merge-speed-digests-")
            pool = CheckpointPool.open(folders[1:], dtype=args.dtype, device=args.device)
            start = time.perf_counter()
            pool.load(threads=n)
            sync(pool.device)
            out[f"{cache}_{n}"] = time.perf_counter() - start
            pool.close()
            del pool
            gc.collect()
    # the same warm load once the digests are cached by stamp (what loading unchanged files
    # costs from then on: no hashing), and the hashing alone from a warm cache
    pool = CheckpointPool.open(folders[1:], dtype=args.dtype, device=args.device)
    start = time.perf_counter()
    pool.load(threads=threads)
    sync(pool.device)
    out["warm_cached"] = time.perf_counter() - start
    pool.close()
    os.environ["MERGE_SEARCH_CACHE"] = tempfile.mkdtemp(prefix="merge-speed-digests-")
    pool = CheckpointPool.open(folders[1:], dtype=args.dtype, device=args.device)
    start = time.perf_counter()
    pool.identity.content_digests()
    out["hash_only"] = time.perf_counter() - start
    del pool
    gc.collect()
    dtype = getattr(torch, args.dtype)
    read_bandwidth(folders[1:], dtype)  # warm the cache again
    out["read_open"] = read_bandwidth(folders[1:], dtype, keep_open=True)
    out["read_reopen"] = read_bandwidth(folders[1:], dtype, keep_open=False)
    return out


def evict(folders: list[Path]) -> None:
    """Drop the files' pages from the page cache (clean pages; no root needed)."""
    for folder in folders:
        for file in folder.glob("*.safetensors"):
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def child(args, phase: str) -> dict:
    """Run this script again as a child for one phase; its JSON result."""
    argv = [a for a in args.argv if not a.startswith("--child")]
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--child", phase],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {phase} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ mergekit

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


# ----------------------------------------------------------------------------------------- main


def report(r: dict, args, bw: dict, host_median: float | None) -> None:
    """Print one placement's lines."""
    k, model = args.k, r["model_bytes"]
    median, best = statistics.median(r["times"]), min(r["times"])
    cuda = args.device.startswith("cuda")
    if r["placement"] == "device" or (r["placement"] == "host" and not cuda):
        bound_s, what = (k + 1) * model / bw["copy"], "device copy bandwidth"
        if r["placement"] == "host":
            what += "; on the CPU host is the device placement"
    elif r["placement"] == "host":
        bound_s = max(k * model / bw["h2d"], (k + 1) * model / bw["copy"])
        what = "host->device copy of the K slices"
    else:
        bound_s, what = k * model / bw["read"], "warm page-cache read of the K slices"
    print(
        f"{r['placement']}: materialize linear (fp32 accumulation, kernel {r['kernel']}): median "
        f"{median * 1e3:.0f} ms, best {best * 1e3:.0f} ms over {len(r['times'])} trials; "
        f"pool load {r['load_s']:.1f} s, model load {r['model_s']:.1f} s"
    )
    print(
        f"  fraction of the bound ({what}, {bound_s * 1e3:.0f} ms): median "
        f"{bound_s / median:.2f}, best {bound_s / best:.2f}"
    )
    if r["placement"] == "disk" and host_median is not None:
        print(f"  disk / host trial time: {median / host_median:.2f}x (target <= 3)")
    growth = r["peak_rss"] - r["baseline_rss"]
    if r["placement"] == "disk":
        allowed, label = model, "one model"
        target = "target <= 1.5" if not cuda else "on CUDA the model is on the device"
    else:
        host_pool = r["resident"] if not cuda or r["placement"] == "host" else 0
        allowed = host_pool + (0 if cuda else model) + r["largest"]
        label, target = "resident pool + one model + largest tensor", "target <= 1"
    print(
        f"  peak RSS growth during trials {growth / GB:.3f} GB vs {label} "
        f"{allowed / GB:.3f} GB -> {growth / max(allowed, 1):.2f} ({target}); the model load "
        f"alone {(r['load_peak_rss'] - r['baseline_rss']) / GB:.3f} GB (its weights map the "
        "file until first written)"
    )
    if r["cuda_peak"] is not None:
        on_device = r["resident"] if r["placement"] == "device" else 2 * r["block_bytes"]
        expected = on_device + model + r["largest"]
        print(
            f"  peak CUDA memory {r['cuda_peak'] / GB:.3f} GB vs "
            f"{'pool' if r['placement'] == 'device' else 'two blocks'} + model + largest "
            f"{expected / GB:.3f} GB -> {r['cuda_peak'] / expected:.2f}"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir)
    if args.child:
        folders = write_checkpoints(args, workdir)
        result = run_load(args, folders) if args.child == "load" else run_placement(args, folders)
        print(json.dumps(result))
        return 0
    from search.engine.device import resolve_device
    from search.engine.pool import CheckpointPool

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"checkpoints in {workdir} (K={args.k}, hidden {args.hidden}, {args.layers} layers)",
        flush=True,
    )
    folders = write_checkpoints(args, workdir)
    model_bytes = CheckpointPool.open(folders[1:], dtype=args.dtype).model_bytes()
    n_params = model_bytes // torch.tensor([], dtype=getattr(torch, args.dtype)).element_size()
    size = max(model_bytes, 256 * 2**20)
    bw = {"copy": copy_bandwidth(device, size)}
    read_bandwidth(folders[1:], getattr(torch, args.dtype))  # warm the page cache
    bw["read"] = read_bandwidth(folders[1:], getattr(torch, args.dtype))
    if device.type == "cuda":
        bw["h2d"] = h2d_bandwidth(device, size)
    placements = PLACEMENTS if args.pool == "all" else (args.pool,)
    results = {p: child(args, p) for p in placements}
    bw["copy"] = (bw["copy"] + copy_bandwidth(device, size)) / 2
    load = None if args.skip_load else child(args, "load")
    threads = next(iter(results.values()))["threads"] if device.type == "cpu" else None

    print()
    print(
        f"model: {n_params / 1e6:.1f} M parameters, {args.dtype}, {model_bytes / GB:.3f} GB per "
        f"model; K = {args.k}; device {device}" + (f" ({threads} threads)" if threads else "")
    )
    print(
        f"bandwidths: device copy {bw['copy'] / GB:.2f} GB/s (read + write), warm page-cache read "
        f"through the maps {bw['read'] / GB:.2f} GB/s"
        + (f", host->device {bw['h2d'] / GB:.2f} GB/s" if "h2d" in bw else "")
    )
    host = results.get("host") or (results.get("device") if device.type == "cpu" else None)
    host_median = statistics.median(host["times"]) if host else None
    for r in results.values():
        report(r, args, bw, host_median)
    if load is not None:
        n = load["threads"]
        print(
            f"resident load of the pool ({args.k} files): warm cache 1 thread "
            f"{load['warm_1']:.2f} s, {n} threads {load[f'warm_{n}']:.2f} s -> "
            f"{load['warm_1'] / load[f'warm_{n}']:.2f}x; cold cache 1 thread "
            f"{load['cold_1']:.2f} s, {n} threads {load[f'cold_{n}']:.2f} s -> "
            f"{load['cold_1'] / load[f'cold_{n}']:.2f}x"
        )
        print(
            f"whole-content fingerprint (XXH3-128 of every file): warm load {n} threads with "
            f"hashing {load[f'warm_{n}']:.2f} s vs digests cached {load['warm_cached']:.2f} s -> "
            f"{load[f'warm_{n}'] / load['warm_cached']:.2f}x; hashing alone {load['hash_only']:.2f}"
            f" s = {load['hash_only'] / load['warm_cached']:.2f}x the cached load"
        )
        print(
            f"disk read path: maps kept open {load['read_open'] / GB:.2f} GB/s, reopened per "
            f"tensor {load['read_reopen'] / GB:.2f} GB/s -> kept open "
            f"{load['read_open'] / load['read_reopen']:.2f}x"
        )
    if not args.skip_mergekit and "device" in results:
        print("running mergekit run_merge (subprocess, to disk) ...", flush=True)
        mk = time_mergekit(folders, args, workdir)
        median = statistics.median(results["device"]["times"])
        best = min(results["device"]["times"])
        print(
            f"mergekit run_merge: {mk:.2f} s -> speed-up per trial (device): median "
            f"{mk / median:.0f}x, best {mk / best:.0f}x (target >= 50x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
