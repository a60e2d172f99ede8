"""Peak anonymous memory of an export (`merge-search merge`) from a `pool: disk`, per method.

    python bench/export_memory.py                                 # K=6 ~27M-parameter fp32 models
    python bench/export_memory.py --k 4 --hidden 512 --layers 4   # smaller

In one run it writes K + 1 random Llama-shaped float32 checkpoints (reused by later runs with the
same sizes), then for each method, in a child process of its own: opens the pool with
``placement="disk"`` and exports one merge with :func:`search.export.folder.export_merge` (the
writer streams: each merged tensor goes to its shard as it is made), and, as the baseline in the
same run, the writer this replaced (every merged tensor of the shard in memory, then
``safetensors.torch.save_file``). A thread samples ``RssAnon`` (anonymous memory: page-cache pages
of the memory-mapped checkpoint files are not counted) every 2 ms; the figure is the peak minus
the value before the export, as a multiple of one model's bytes. Target: <= 1.5x for every method.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=6000)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "export_memory_bench"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class Peak:
    """Samples RssAnon in a thread; ``peak - start`` after the block."""

    def __enter__(self) -> Peak:
        self.start = rss_anon()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())

    @property
    def grown(self) -> int:
        return self.peak - self.start


def write_checkpoints(args, root: Path) -> list[Path]:
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
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    stamp = {k: getattr(args, k) for k in ("k", "hidden", "layers", "intermediate", "vocab")}
    folders = [root / "base", *(root / f"ckpt{i}" for i in range(args.k))]
    marker = root / "sizes.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folders
    with torch.device("meta"):
        shapes = {
            n: t.shape for n, t in AutoModelForCausalLM.from_config(config).state_dict().items()
        }
    gen = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        folder.mkdir(exist_ok=True)
        tensors = {n: torch.randn(s, generator=gen) * 0.02 for n, s in shapes.items()}
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        config.save_pretrained(folder)
    marker.write_text(json.dumps(stamp))
    return folders


def old_writer(resolved, pool, folder: Path, dtype: torch.dtype, max_shard: int) -> None:
    """The writer before streaming: a shard's merged tensors in memory, then save_file."""
    from safetensors.torch import save_file

    from search.engine.materialize import merge_into

    outs = {n: torch.empty(pool.shapes[n], dtype=dtype) for n in pool.tensor_names}
    with torch.no_grad():
        merge_into(resolved, pool, outs)
    save_file(outs, str(folder / "model.safetensors"), metadata={"format": "pt"})


def run_child(args, method: str, writer: str) -> dict:
    import search.export.folder as folder_mod
    from search.engine.plan import MergePlan
    from search.engine.pool import CheckpointPool
    from search.engine.registry import METHODS as REGISTRY

    os.environ["MERGE_SEARCH_CACHE"] = tempfile.mkdtemp(prefix="export-memory-digests-")
    torch.set_num_threads(1)
    folders = write_checkpoints(args, Path(args.workdir) / "pool")
    base = folders[0] if REGISTRY[method].needs_base else None
    pool = CheckpointPool.open(folders[1:], base, placement="disk")
    pool.identity.fingerprint()  # hashed before the measurement (a study does it at creation)
    weights = [1.0 / (i + 1) for i in range(args.k)]
    params = {"density": 0.5} if "ties" in method or method == "breadcrumbs" else {}
    plan = MergePlan.create(method, weights, params, seed=1)
    if writer == "old":
        folder_mod._write_weights = old_writer
    out = Path(tempfile.mkdtemp(prefix="export-memory-out-", dir=args.workdir)) / "merged"
    start = time.perf_counter()
    with Peak() as peak:
        folder_mod.export_merge(plan, pool, out)
    return {
        "grown": peak.grown,
        "model": pool.model_bytes(),
        "seconds": time.perf_counter() - start,
        "largest": 4 * max(torch.Size(s).numel() for s in pool.shapes.values()),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        method, writer = args.child.split(":")
        print(json.dumps(run_child(args, method, writer)))
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    folders = write_checkpoints(args, Path(args.workdir) / "pool")
    print(f"pool: {args.k} float32 checkpoints + base in {folders[0].parent}", flush=True)
    argv = [a for a in (argv or sys.argv[1:]) if not a.startswith("--child")]
    print("method | old writer: anon growth / model | streaming: anon growth / model | seconds")
    for method in args.methods.split(","):
        row = {}
        for writer in ("old", "stream"):
            proc = subprocess.run(
                [sys.executable, __file__, *argv, "--child", f"{method}:{writer}"],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise SystemExit(f"{method} {writer} failed:\n{proc.stderr[-3000:]}")
            row[writer] = json.loads(proc.stdout.strip().splitlines()[-1])
        model = row["stream"]["model"]
        old, new = row["old"], row["stream"]
        largest = new["largest"] / 1e6
        print(
            f"{method} | {old['grown'] / model:.2f}x | {new['grown'] / model:.2f}x "
            f"| {old['seconds']:.1f} -> {new['seconds']:.1f} "
            f"(model {model / 1e6:.0f} MB, largest tensor in float32 {largest:.0f} MB)",
            flush=True,
        )


if __name__ == "__main__":
    main()
