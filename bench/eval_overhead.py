"""Where a trial's time goes on the demo pool: merge, model forward passes, everything else.

    python bench/eval_overhead.py [--zoo studies/zoo] [--trials 12] [--limit 100] [--scores]

Each trial draws linear-merge weights (Dirichlet, seeded), materializes the merge into the
resident model (``search.engine.materialize``) and scores both demo search tasks with the
evaluator a
study uses (``evaluators.build_evaluator``). Forward time is measured with forward hooks on the
model (every call of the model's ``forward``, prefill and decode steps alike). "Everything else"
is the rest of the evaluation: lm-eval's request building, tokenization, batching and metric
bookkeeping plus Hugging Face's generation loop between forward calls (reported separately by
timing ``model.generate``). Target: everything else < 10 % of the trial.

Per-example results: every trial also runs the mean-only path once (lm-eval without sample
logging, ``LmEvalEvaluator.run_tasks(log_samples=False)``), in alternating order with the full
path (``evaluate``: logged samples, per-example values, standard errors, plus packing them for
the study, ``search.study.record.encode_examples``). The overhead of per-example logging is
their difference as a share of the full trial (merge + full evaluation), with its standard
error over the trials. Target: <= 3 % of a trial.

``--scores`` also prints the score table: every checkpoint, the uniform average and a few
hand-picked weightings, on the search and the held-out splits.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

from search.engine.model import load_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# this bench reads only local pools and tasks: keep the Hugging Face libraries off the hub
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")


class ForwardClock:
    """Seconds spent inside ``model.forward`` and inside ``model.generate``, via hooks/wrapping."""

    def __init__(self, model) -> None:
        self.forward_s = 0.0
        self.generate_s = 0.0
        self.calls = 0
        self._start = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)
        inner = model.generate

        def generate(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.generate_s += time.perf_counter() - t

        model.generate = generate  # instance attribute: this bench's model only

    def _pre(self, module, args) -> None:
        self._start = time.perf_counter()

    def _post(self, module, args, output) -> None:
        self.forward_s += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.forward_s = self.generate_s = 0.0
        self.calls = 0


def objectives(split: str = ""):
    from evaluators import ObjectiveSpec, TaskRef

    return [
        ObjectiveSpec(name=skill, tasks=(TaskRef(task=f"demo_{skill}{split}"),))
        for skill in ("code", "instruct")
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--zoo", default=str(REPO / "studies" / "zoo"), help="demo pool folder (built if missing)"
    )
    parser.add_argument(
        "--size", default="full", choices=["full", "tiny"], help="pool size (tiny: a smoke run)"
    )
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument(
        "--limit", type=int, default=100, help="examples per task (the demo study's)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo worker's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scores", action="store_true", help="also print the score table")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from evaluators import EvalSpec, build_evaluator
    from search.engine.materialize import materialize
    from search.engine.plan import MergePlan
    from search.engine.pool import CheckpointPool
    from search.study.record import encode_examples
    from search.zoo import build_zoo

    zoo = build_zoo(args.zoo, seed=args.seed, size=args.size, progress=True)
    print(zoo.summary())
    pool = CheckpointPool.open(zoo.checkpoints, zoo.base)
    model, tokenizer = load_model(pool)
    clock = ForwardClock(model)
    tasks_path = REPO / "configs" / "tasks" / "demo"
    spec = EvalSpec(tasks_path=tasks_path, limit=args.limit, batch_size=args.batch_size)
    t = time.perf_counter()
    evaluator = build_evaluator(objectives(), spec, model, tokenizer)
    setup_s = time.perf_counter() - t
    print(f"torch threads {torch.get_num_threads()}; pool {list(pool.names)}")
    print(f"evaluator built once in {setup_s:.2f} s (tasks, data, HFLM)")

    rng = random.Random(args.seed)
    rows = []
    overhead = []  # per trial: (full evaluate + packing) - mean-only, and the full trial
    for trial in range(args.trials + 1):  # trial 0 warms up (first merge reads the files)
        weights = [rng.gammavariate(1.0, 1.0) for _ in pool.names]
        plan = MergePlan.create("linear", weights, seed=trial)
        t0 = time.perf_counter()
        materialize(plan, pool, model)
        t1 = time.perf_counter()
        if trial % 2:
            mean_only = _time(lambda: evaluator.run_tasks(log_samples=False))
        clock.reset()
        t_eval = time.perf_counter()
        scores = evaluator.evaluate(model, tokenizer)
        encode_examples(scores.examples)
        t2 = time.perf_counter()
        forward_s, generate_s, calls = clock.forward_s, clock.generate_s, clock.calls
        if not trial % 2:
            mean_only = _time(lambda: evaluator.run_tasks(log_samples=False))
        if trial:
            gen_loop = generate_s - forward_s
            rows.append((t1 - t0, forward_s, gen_loop, t2 - t_eval, scores))
            overhead.append(((t2 - t_eval) - mean_only, (t1 - t0) + (t2 - t_eval)))
    clock.calls = calls
    merge = statistics.mean(r[0] for r in rows)
    forward = statistics.mean(r[1] for r in rows)
    gen_loop = statistics.mean(r[2] for r in rows)
    evaluate = statistics.mean(r[3] for r in rows)
    trial_s = merge + evaluate
    other = evaluate - forward
    print(
        f"\nper trial over {len(rows)} trials "
        f"(limit {args.limit} x 2 tasks, batch {args.batch_size}):"
    )
    print(f"  trial               {trial_s:7.3f} s  100.0 %")
    print(f"  merge               {merge:7.3f} s  {100 * merge / trial_s:5.1f} %")
    print(
        f"  model forward       {forward:7.3f} s  {100 * forward / trial_s:5.1f} %  "
        f"({clock.calls} calls)"
    )
    print(f"  everything else     {other:7.3f} s  {100 * other / trial_s:5.1f} %")
    print(
        f"    of it, HF generate loop outside forward {gen_loop:.3f} s "
        f"({100 * gen_loop / trial_s:.1f} %),"
    )
    print(
        f"    lm-eval harness (requests, tokenization, metrics) {other - gen_loop:.3f} s "
        f"({100 * (other - gen_loop) / trial_s:.1f} %)"
    )
    shares = [extra / trial_s for extra, trial_s in overhead]
    share = statistics.mean(shares)
    share_se = statistics.stdev(shares) / len(shares) ** 0.5 if len(shares) > 1 else float("nan")
    extra = statistics.mean(e for e, _ in overhead)
    print(
        f"  per-example logging (samples, per-example values, standard errors, packing): "
        f"{extra * 1000:.1f} ms a trial = {100 * share:.2f} % ± {100 * share_se:.2f} % "
        f"of the trial (target <= 3 %; {len(shares)} trials, each against the mean-only path)"
    )
    last = rows[-1][4]
    print(
        "  last trial: "
        + ", ".join(
            f"{name} {last.objectives[name]:.3f} ± {last.stderr[name]:.3f}"
            for name in last.objectives
        )
        + f" (n = {', '.join(f'{k} {len(v)}' for k, v in last.examples.items())})"
    )
    if args.scores:
        print_scores(pool, model, tokenizer, spec)
    return 0


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


RUNS = ("code_heavy", "instruct_heavy", "balanced")  # the demo pool's runs (search.zoo.recipe)


def print_scores(pool, model, tokenizer, spec) -> None:
    """Singles, the uniform soup and hand-picked weightings on the search and held-out splits."""
    from evaluators import build_evaluator
    from search.engine.materialize import materialize
    from search.engine.plan import MergePlan

    names = list(pool.names)
    full = spec.model_copy(update={"limit": None})  # all examples of each split
    search_ev = build_evaluator(objectives(), full, model, tokenizer)
    held_ev = build_evaluator(objectives("_heldout"), full, model, tokenizer)
    weightings = {name: [1.0 if n == name else 0.0 for n in names] for name in names}
    weightings["uniform"] = [1.0] * len(names)
    runs = {run: [n for n in names if n.startswith(f"{run}_")] for run in RUNS}
    picks = {f"{run} run (its checkpoints)": dict.fromkeys(ns, 1) for run, ns in runs.items() if ns}
    picks["instruct_heavy + balanced runs"] = dict.fromkeys(
        runs["instruct_heavy"] + runs["balanced"], 1
    )
    picks["last checkpoint of each run"] = {ns[-1]: 1 for ns in runs.values() if ns}
    for label, chosen in picks.items():
        if all(n in names for n in chosen):
            weightings[label] = [float(chosen.get(n, 0)) for n in names]
    print("\nlinear merges, exact match on all examples of each split (200 search, 1,000 held-out)")
    head = f"{'code':>7}{'instr':>7}{'mean':>7}"
    print(f"{'merge':<30}{head}   held-out:{head}")
    means = {}
    largest_se = 0.0
    for label, w in weightings.items():
        materialize(MergePlan.create("linear", w), pool, model)
        search = search_ev.evaluate(model, tokenizer)
        held = held_ev.evaluate(model, tokenizer)
        s, h = search.objectives, held.objectives
        largest_se = max(largest_se, *search.stderr.values(), *held.stderr.values())
        means[label] = (_mean(s), _mean(h))
        print(f"{label:<30}{_row(s)}   {'':9}{_row(h)}")
    print(
        f"(each skill score over 200 examples; standard errors at most {largest_se:.3f}, "
        f"the mean of two skills' at most {largest_se / 2**0.5:.3f})"
    )
    single = max(names, key=lambda n: means[n][0])
    merge = max((m for m in means if m not in names), key=lambda m: means[m][0])
    print(
        f"\nbest single checkpoint on the search mean: {single} "
        f"(search {means[single][0]:.3f}, held-out {means[single][1]:.3f}); best single on "
        f"held-out: {max(means[n][1] for n in names):.3f}"
    )
    print(
        f"best merge above on the search mean: {merge} (search {means[merge][0]:.3f}, "
        f"held-out {means[merge][1]:.3f}); ratio to the best single: "
        f"search {means[merge][0] / means[single][0]:.3f}, held-out "
        f"{means[merge][1] / max(means[n][1] for n in names):.3f}"
    )


def _mean(scores: dict[str, float]) -> float:
    return (scores["code"] + scores["instruct"]) / 2


def _row(scores: dict[str, float]) -> str:
    return f"{scores['code']:7.3f}{scores['instruct']:7.3f}{_mean(scores):7.3f}"


if __name__ == "__main__":
    sys.exit(main())
