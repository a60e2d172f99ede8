"""Per-trial time with ``eval.backend: hf`` against ``vllm`` on a generation suite.

    python bench/eval_backends.py [--sizes demo,100m] [--trials 4] [--examples 32]
        [--new-tokens 96] [--threads 2]

Run it in the vLLM venv (``make vllm-venv``; ``.venv-vllm/bin/python bench/eval_backends.py``).
For each model size a pool of three checkpoints is written to a temporary folder: a Llama with
random weights (seeded; the timing does not depend on what the weights learned) and the demo
pool's character tokenizer, plus two checkpoints that are the base plus seeded noise.

- ``demo``: the demo model's shape (hidden 128, 4 layers, 4 heads, MLP 384; ~0.8 M parameters),
  with a context of 256 instead of 64 so the prompts and the generations fit;
- ``100m``: hidden 768, 12 layers, 12 heads, MLP 2560 (~99 M parameters).

The suite is one ``generate_until`` task: the demo code prompts, greedy, ``--new-tokens`` new
tokens (its stop string never appears, so every request generates up to the limit unless the
model emits ``</s>``).

One process holds one resident model, an ``hf`` evaluator and a ``vllm`` evaluator on it (what
a worker of each back end builds once). Each trial draws linear-merge weights (Dirichlet,
seeded) and, for each back end in alternating order, times the trial a worker runs: the merge
into the resident model (``materialize``), the weight hand-over (``sync_weights``: nothing for
``hf``, ``reload_weights`` into the engine for ``vllm``) and the scoring (lm-eval with
per-sample logging). One warm-up trial per back end is not counted. Printed: per back end the
mean of each part with its standard error over the trials, the hand-over as a share of the
vLLM trial, and the per-trial ratio hf / vllm (mean ± standard error over the paired trials),
plus the generated lengths (the same work for both) and the one-off start-up of each back end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from search.engine.model import load_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# this bench reads only local pools and tasks: keep the Hugging Face libraries off the hub
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

SIZES = {  # name -> (hidden, layers, heads, intermediate)
    "demo": (128, 4, 4, 384),
    "100m": (768, 12, 12, 2560),
}
CONTEXT = 256
STOP = "@@@@"  # never generated as a whole by these models: generation runs to the limit


def write_pool(root: Path, size: str, k: int, seed: int) -> tuple[Path, list[Path]]:
    """A random-init base and ``k - 1`` noisy copies, each a Hugging Face folder."""
    import torch
    from transformers import LlamaForCausalLM

    from search.zoo.model import char_tokenizer, llama_config

    hidden, layers, heads, intermediate = SIZES[size]
    config = llama_config(hidden, layers, heads, intermediate, context=CONTEXT)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    tok = char_tokenizer()
    folders = []
    base_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    for i in range(k):
        folder = root / f"{size}_{i}"
        if i:
            gen = torch.Generator().manual_seed(seed + i)
            noisy = {
                n: t + 0.01 * torch.randn(t.shape, generator=gen) for n, t in base_state.items()
            }
            model.load_state_dict(noisy)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders


def write_task(root: Path, examples: int, new_tokens: int) -> Path:
    """The suite: ``examples`` demo code prompts, greedy, up to ``new_tokens`` new tokens."""
    import yaml

    rows = [
        json.loads(line)
        for line in (REPO / "configs/tasks/demo/demo_code.jsonl").read_text().splitlines()
    ][:examples]
    folder = root / "tasks"
    folder.mkdir()
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": "gen_long",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "gen.jsonl")}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "generation_kwargs": {"until": [STOP], "do_sample": False, "max_gen_toks": new_tokens},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "num_fewshot": 0,
        "metadata": {"version": 1.0},
    }
    (folder / "gen_long.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def bench_size(size: str, args: argparse.Namespace, root: Path) -> dict:
    import torch

    from evaluators import EvalSpec, ObjectiveSpec, TaskRef, build_evaluator
    from evaluators.spec import VllmSpec
    from search.engine.materialize import materialize
    from search.engine.plan import MergePlan
    from search.engine.pool import CheckpointPool

    # both back ends compute in this process, on its torch threads (set before vLLM starts: its
    # CPU worker turns torch.set_num_threads into a no-op)
    torch.set_num_threads(args.threads)
    base, folders = write_pool(root, size, args.k, args.seed)
    tasks = write_task(root, args.examples, args.new_tokens)
    pool = CheckpointPool.open(folders, None, device="cpu", dtype="float32")
    pool.load()
    model, tok = load_model(pool)
    params = sum(p.numel() for p in model.parameters())
    objectives = [ObjectiveSpec(name="gen", tasks=(TaskRef(task="gen_long"),))]
    spec = EvalSpec(tasks_path=tasks, batch_size=args.examples, max_length=CONTEXT)
    start = time.perf_counter()
    evaluators = {"hf": build_evaluator(objectives, spec, model, tok)}
    startup = {"hf": time.perf_counter() - start}
    vllm_spec = spec.model_copy(
        update={"backend": "vllm", "vllm": VllmSpec(cpu_kv_cache_gib=1.0, enforce_eager=True)}
    )
    start = time.perf_counter()
    evaluators["vllm"] = build_evaluator(objectives, vllm_spec, model, tok)
    startup["vllm"] = time.perf_counter() - start

    torch.manual_seed(args.seed)  # the Dirichlet draws below
    parts: dict[str, dict[str, list[float]]] = {
        b: {"merge": [], "handover": [], "score": [], "trial": []} for b in evaluators
    }
    lengths: dict[str, list[int]] = {b: [] for b in evaluators}
    for t in range(args.trials + 1):
        weights = torch.distributions.Dirichlet(torch.ones(len(folders))).sample().tolist()
        plan = MergePlan.create("linear", weights)
        order = ["hf", "vllm"] if t % 2 == 0 else ["vllm", "hf"]
        for backend in order:
            ev = evaluators[backend]
            t0 = time.perf_counter()
            materialize(plan, pool, model)
            t1 = time.perf_counter()
            ev.sync_weights()
            t2 = time.perf_counter()
            out = ev.run_tasks(sync=False)
            t3 = time.perf_counter()
            if t == 0:
                continue  # warm-up
            for name, value in (
                ("merge", t1 - t0),
                ("handover", t2 - t1),
                ("score", t3 - t2),
                ("trial", t3 - t0),
            ):
                parts[backend][name].append(value)
            lengths[backend] += [len(s["resps"][0][0]) for s in out["samples"]["gen_long"]]
    ratios = [h / v for h, v in zip(parts["hf"]["trial"], parts["vllm"]["trial"], strict=True)]
    share = [h / v for h, v in zip(parts["vllm"]["handover"], parts["vllm"]["trial"], strict=True)]
    return {
        "size": size,
        "params": params,
        "startup": startup,
        "parts": parts,
        "ratio": mean_se(ratios),
        "handover_share": mean_se(share),
        "lengths": {b: statistics.fmean(v) for b, v in lengths.items()},
    }


def report(result: dict, args: argparse.Namespace) -> None:
    print(
        f"\n== {result['size']}: {result['params'] / 1e6:.1f} M parameters, {args.examples} "
        f"prompts, up to {args.new_tokens} new tokens, {args.trials} trials =="
    )
    print(
        "start-up once per worker: "
        + ", ".join(f"{b} {s:.2f} s" for b, s in result["startup"].items())
    )
    print(f"{'backend':<8}{'merge s':>16}{'hand-over s':>18}{'score s':>18}{'trial s':>18}")
    for backend, parts in result["parts"].items():
        cells = []
        for name in ("merge", "handover", "score", "trial"):
            m, se = mean_se(parts[name])
            cells.append(f"{m:.4f} ± {se:.4f}")
        print(f"{backend:<8}" + "".join(f"{c:>18}" for c in cells))
    m, se = result["ratio"]
    print(f"trial time hf / vllm: {m:.2f} ± {se:.2f} (paired over {args.trials} trials)")
    m, se = result["handover_share"]
    print(f"hand-over share of the vllm trial: {100 * m:.2f} % ± {100 * se:.2f} %")
    print(
        "mean generated characters (= tokens) per prompt: "
        + ", ".join(f"{b} {v:.1f}" for b, v in result["lengths"].items())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="demo,100m", help=f"comma-separated: {list(SIZES)}")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--examples", type=int, default=32, help="prompts per trial")
    parser.add_argument("--new-tokens", type=int, default=96, help="max_gen_toks")
    parser.add_argument("--k", type=int, default=3, help="checkpoints in the pool")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (hf)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; expected some of {list(SIZES)}")
    import torch
    import vllm

    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores; torch {torch.__version__}, vllm {vllm.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            (Path(tmp) / size).mkdir()
            report(bench_size(size, args, Path(tmp) / size), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
