"""Does the demo's verdict hold? The exported merge against the uniform merge and every input,
on the test split.

For each zoo seed, as ``make demo`` does but from scratch: build the demo pool
(``merge-search zoo build DIR --seed N`` into a new folder), run the demo study
(``merge-search launch configs/demo.yaml --workers 2``, the config's pool and storage pointed
into that folder), print its report (``merge-search pareto``: the front, held-out re-scores,
the test section) and export the knee (``merge-search export --knee``: chosen on the held-out
re-scores). Then score the exported folder, the uniform merge (the mean of the inputs' tensors,
what one mergekit line makes) and every input checkpoint on the test split
(``eval.test``: data neither the search nor the choice saw) with lm-eval's per-example results
and print, per seed:

- each model's exact match per skill and the mean of the two skills, with the binomial
  standard error of that mean (``0.5 · sqrt(SE_a² + SE_b²)``, each ``sqrt(p(1-p)/n)``);
- the paired difference export − input on the mean of the two skills and its standard error
  from the per-example differences on the same examples
  (``0.5 · sqrt(var(d_a)/n_a + var(d_b)/n_b)``), and how many SEs that is;
- the ratio exported / best input on the mean.

The verdict of a seed holds when the export beats the uniform merge and every input by at least
``--min-se`` (default 2) paired standard errors. Seeds run one after the other; each takes
several minutes on 2 cores (the build most of it).

Usage (from the repository root)::

    python bench/demo_verdict.py --seeds 0 1 2 [--recipe recycle] [--workdir DIR] [--json FILE]
    python bench/demo_verdict.py --recipe mixtures --config configs/mixtures.yaml

The standard errors are computed here, from lm-eval's ``log_samples`` output; the library's own
scores carry no per-example results yet.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without install

from _study import on_pool  # noqa: E402

# this bench reads only local pools and tasks: keep the Hugging Face libraries off the hub
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--recipe", default="recycle", help="zoo recipe (configs/demo.yaml's pool)")
    p.add_argument("--workdir", default=None, help="where pools and studies go (default: temp)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--min-se", type=float, default=2.0, help="paired SEs the export must lead by")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument(
        "--zoos",
        default=None,
        help="reuse pools built earlier (DIR/seedN/zoo, `merge-search zoo build DIR/seedN/zoo "
        "--seed N`) instead of building them: reruns the search alone; the verdict itself "
        "needs pools built from scratch",
    )
    return p.parse_args(argv)


def cli(*args: str, log: Path) -> float:
    """Run ``merge-search ARGS`` as a user would; append its output to ``log``; seconds taken."""
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ merge-search {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "search.cli", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"},
            check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"merge-search {' '.join(args)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start


def demo_config(config: Path, zoo: Path, folder: Path, name: str) -> Path:
    """The demo config with its pool in ``zoo`` and its study stored in ``folder``."""
    data = on_pool(yaml.safe_load(config.read_text()), zoo)
    data.update(name=name, storage=f"sqlite:///{folder / f'{name}.db'}")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class SplitScorer:
    """Per-example exact match of saved models on the test tasks: one model, one lm-eval LM."""

    def __init__(self, base: Path, tasks_path: Path, tasks: list[str], batch_size: int) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        from evaluators.lm_tasks import load_tasks
        from evaluators.resident_lm import ResidentHFLM

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.tasks = tasks
        loaded = load_tasks(tasks, tasks_path)
        self.task_dict = {
            "tasks": {n: t.task for n, t in loaded.tasks.items()},
            "groups": {},
            "group_map": {},
        }
        self.model = LlamaForCausalLM(LlamaConfig.from_pretrained(base)).eval()
        self.lm = ResidentHFLM(
            pretrained=self.model,
            tokenizer=AutoTokenizer.from_pretrained(base),
            batch_size=batch_size,
        )

    def score(self, folder: Path) -> dict[str, list[float]]:
        """``{task: [exact match per example, in doc order]}`` of the model saved in ``folder``."""
        from safetensors.torch import load_file

        return self.score_state(load_file(str(folder / "model.safetensors")))

    def score_state(self, state: dict[str, Any]) -> dict[str, list[float]]:
        """As :meth:`score`, for a state dict in memory."""
        import torch
        from lm_eval.evaluator import evaluate

        with torch.no_grad():
            self.model.load_state_dict(state)
        with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's progress bars
            out = evaluate(
                lm=self.lm, task_dict=self.task_dict, bootstrap_iters=0, log_samples=True
            )
        per: dict[str, list[float]] = {}
        for task in self.tasks:
            samples = sorted(out["samples"][task], key=lambda d: d["doc_id"])
            per[task] = [float(d["exact_match"]) for d in samples]
        return per


def uniform(cfg: dict[str, Any]) -> dict[str, Any]:
    """The uniform merge of the config's checkpoints: the mean of their tensors (float32)."""
    from safetensors.torch import load_file

    total: dict[str, Any] = {}
    for path in cfg["checkpoints"]:
        for k, t in load_file(str(Path(path) / "model.safetensors")).items():
            total[k] = total[k] + t.float() if k in total else t.float().clone()
    return {k: t / len(cfg["checkpoints"]) for k, t in total.items()}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def var(xs: list[float]) -> float:
    m = mean(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def summarize(per: dict[str, dict[str, list[float]]], tasks: list[str]) -> dict[str, Any]:
    """Means, binomial SEs, paired differences export − input and their SEs."""
    rows: dict[str, Any] = {}
    for name, scores in per.items():
        means = {t: mean(scores[t]) for t in tasks}
        se = {t: math.sqrt(means[t] * (1 - means[t]) / len(scores[t])) for t in tasks}
        rows[name] = {
            "tasks": means,
            "n": {t: len(scores[t]) for t in tasks},
            "mean": mean(list(means.values())),
            "se": math.sqrt(sum(s * s for s in se.values())) / len(tasks),
        }
    exported = per["export"]
    for name, scores in per.items():
        if name == "export":
            continue
        diffs = {t: [a - b for a, b in zip(exported[t], scores[t], strict=True)] for t in tasks}
        d = mean([mean(diffs[t]) for t in tasks])
        se = math.sqrt(sum(var(diffs[t]) / len(diffs[t]) for t in tasks)) / len(tasks)
        rows[name].update(diff=d, diff_se=se, z=d / se if se > 0 else math.inf)
    inputs = [n for n in per if n not in ("export", "uniform")]
    best = max(inputs, key=lambda n: rows[n]["mean"])
    return {
        "rows": rows,
        "best_input": best,
        "ratio": rows["export"]["mean"] / rows[best]["mean"],
        "ratio_uniform": rows["export"]["mean"] / rows["uniform"]["mean"],
        "uniform_z": rows["uniform"]["z"],
        "min_z": min(rows[n]["z"] for n in (*inputs, "uniform")),
    }


def print_seed(seed: int, result: dict[str, Any], tasks: list[str], min_se: float) -> None:
    rows = result["rows"]
    short = [t.replace("demo_", "").replace("_test", "") for t in tasks]
    n = ", ".join(f"{s} {rows['export']['n'][t]}" for s, t in zip(short, tasks, strict=True))
    print(f"\nseed {seed}: test split ({n} examples); exported = {result['export_how']}")
    head = ["model", *short, "mean ± SE", "export − it ± paired SE", "SEs"]
    table = [head]
    for name, r in rows.items():
        cells = [name, *(f"{r['tasks'][t]:.3f}" for t in tasks), f"{r['mean']:.3f} ± {r['se']:.3f}"]
        if "diff" in r:
            cells += [f"{r['diff']:+.3f} ± {r['diff_se']:.3f}", f"{r['z']:+.1f}"]
        else:
            cells += ["", ""]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    holds = result["min_z"] >= min_se
    print(
        f"exported / best input ({result['best_input']}) on the mean: {result['ratio']:.3f}; "
        f"exported / uniform merge: {result['ratio_uniform']:.3f} "
        f"(lead {result['uniform_z']:+.1f} paired SEs); smallest lead over the uniform merge "
        f"and every input {result['min_z']:+.1f} paired SEs: verdict "
        f"{'holds' if holds else 'does NOT hold'} (needs >= {min_se:g})"
    )
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items())
    print(f"time: {times} (make demo's steps; this machine's load included)")


def run_seed(seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    folder = root / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=False)  # from scratch: never a cached pool
    zoo = folder / "zoo"
    log = folder / "demo.log"
    seconds: dict[str, float] = {}
    if args.zoos:
        zoo = Path(args.zoos) / f"seed{seed}" / "zoo"
        log.write_text(f"(pool reused from {zoo})\n")
    else:
        seconds["zoo build"] = cli(
            "zoo", "build", str(zoo), "--seed", str(seed), "--recipe", args.recipe, log=log
        )
    config = demo_config(Path(args.config), zoo, folder, f"demo-seed{seed}")
    seconds["launch"] = cli("launch", str(config), "--workers", str(args.workers), log=log)
    seconds["pareto"] = cli("pareto", str(config), log=log)
    export = folder / "export"
    seconds["export"] = cli("export", str(config), "--knee", "--out", str(export), log=log)
    print(log.read_text(), flush=True)

    cfg = yaml.safe_load(config.read_text())
    test = cfg["eval"]["test"]
    tasks = [test[t["task"]] for o in cfg["objectives"] for t in o["tasks"]]
    scorer = SplitScorer(zoo / "base", zoo / "tasks", tasks, cfg["eval"].get("batch_size", 64))
    start = time.perf_counter()
    per = {"export": scorer.score(export), "uniform": scorer.score_state(uniform(cfg))}
    for path in cfg["checkpoints"]:
        per[Path(path).name] = scorer.score(Path(path))
    result = summarize(per, tasks)
    seconds["scoring here"] = time.perf_counter() - start
    card = (export / "README.md").read_text()
    how = next((ln for ln in card.splitlines() if ln.startswith("| chosen as |")), "")
    trial = next((ln for ln in card.splitlines() if ln.startswith("| trial |")), "")
    result["export_how"] = (
        f"trial {trial.split('|')[2].strip()}, {how.split('|')[2].strip()}" if how else "?"
    )
    result["seconds"] = seconds
    result["seed"] = seed
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="demo-verdict-") if args.workdir is None else None
    root = Path(args.workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        result = run_seed(seed, args, root)
        results.append(result)
        cfg = yaml.safe_load(Path(args.config).read_text())
        tasks = [cfg["eval"]["test"][t["task"]] for o in cfg["objectives"] for t in o["tasks"]]
        print_seed(seed, result, tasks, args.min_se)
    held = [r for r in results if r["min_z"] >= args.min_se]
    print(
        f"\nverdict holds for {len(held)}/{len(results)} seeds "
        f"(export beats the uniform merge and every input on the test-split mean by >= "
        f"{args.min_se:g} paired SEs)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0 if len(held) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
