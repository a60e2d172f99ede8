"""Benchmark: how good a Pareto front does each sampler find at an equal budget?

On the demo pool (``--zoo``: an existing pool is used as it is, a missing one is built like
``merge-search zoo build``; objectives, merge method and eval settings from ``--config`` when
it exists), every sampler in ``--samplers`` runs ``--trials`` trials for each of ``--seeds``
seeds, each run a fresh study in its own SQLite file in a temp folder, driven by the study service
(``search.study.storage.create_or_resume``, ``search.study.samplers.build_sampler``,
``search.study.worker.run_worker``). One resident model and evaluator
(``search.study.worker.Runtime``)
score every run, so model loading is paid once.

Reported per sampler (mean over seeds):

- ``HV ratio``: hypervolume of the run's front / hypervolume of the reference front, both
  against one reference point (the worst value seen on each objective over everything scored
  here). The reference front is the Pareto front of a dense grid of weights (every weight
  vector with entries in ``{0, 1/k, ..., 1}`` summing to 1, the largest ``k`` with at most
  ``--grid-max`` merges; only when the space is one normalized weight per checkpoint with no
  searched method parameter) together with every trial of every run; otherwise of the runs alone.
- ``beats on mean``: in how many runs some front merge has a higher mean of the objectives
  (minimized ones negated) than every input checkpoint and the uniform average.
- ``dominates all``: in how many runs every input checkpoint and the uniform average is
  Pareto-dominated by a front merge.

- ``HV ratio @ n``: the same for the first ``n`` trials of each run (``--at``, default 10, 20,
  40), and the ratio of a variant's mean to ``nsga2``'s and ``random``'s at the same ``n``.

Seed trials (inputs, uniform) are left out of the runs so the whole budget is the sampler's own.

Data-informed variants:

- ``fw``: the ``fw`` sampler, i.e. only the Frank-Wolfe paths' endpoints (``fw.preferences``
  trials; deterministic, so every seed gives the same); ``X+fw``: sampler ``X`` after the
  endpoints enqueued as seed trials. The paths are computed once (they do not depend on the
  sampler seed); their cost (gradient evaluations, backward passes, seconds) is printed beside
  the mean seconds of one lm-eval trial.
- ``--fisher-samplers nsga2``: the same sampler on a ``fisher`` merge (calibration
  ``tasks: from_objectives``, ``--fisher-examples`` N), against the linear runs at equal trials;
  the Fishers' cost is printed.

Usage (from the repository root)::

    python bench/search_quality.py                        # 4 samplers x 3 seeds x 40 trials
                                                          # + a 210-merge grid: ~11 min, 2 cores
    python bench/search_quality.py --samplers nsga2,random,fw,nsga2+fw --fisher-samplers nsga2
    python bench/search_quality.py --trials 16 --seeds 1 --grid-max 60 --limit 50
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import _study  # noqa: E402

from search.report.frontier import dominates, hypervolume, pareto_front  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        default="configs/demo.yaml",
        help="study settings to use (objectives, merge, eval); its pool is replaced by --zoo",
    )
    p.add_argument("--zoo", default="studies/zoo", help="demo pool folder (built when missing)")
    p.add_argument(
        "--zoo-size",
        default="full",
        choices=("full", "tiny"),
        help="tiny: a seconds-to-build pool for a smoke run (its scores mean nothing)",
    )
    p.add_argument(
        "--samplers",
        default="nsga2,tpe,gp,random",
        help="comma-separated: sampler names, 'fw' (Frank-Wolfe endpoints only), "
        "'X+fw' (sampler X after the Frank-Wolfe endpoints)",
    )
    p.add_argument(
        "--fisher-samplers",
        default="",
        help="samplers also run on a fisher merge (same objectives and budget), e.g. nsga2",
    )
    p.add_argument("--fisher-examples", type=int, default=256, help="N of the Fishers")
    p.add_argument(
        "--at", default="10,20,40", help="trial counts at which the HV ratio is also reported"
    )
    p.add_argument("--trials", type=int, default=40, help="trials per run (the equal budget)")
    p.add_argument("--seeds", type=int, default=3, help="runs per sampler (seeds 0..N-1)")
    p.add_argument(
        "--population",
        type=int,
        default=None,
        help="NSGA-II population size (default: max(4, trials // 5))",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="override eval.limit (examples per task)"
    )
    p.add_argument(
        "--grid-max", type=int, default=300, help="most merges in the reference grid (0: none)"
    )
    p.add_argument(
        "--workdir", default=None, help="where the SQLite files go (default: a temp folder)"
    )
    p.add_argument(
        "--heldout",
        action="store_true",
        help="also re-score every run's front on the held-out tasks (eval.heldout)",
    )
    p.add_argument(
        "--test",
        action="store_true",
        help="re-score every run's front on the held-out and test tasks (eval.heldout, eval.test):"
        " the front's test hypervolume (reference: the worst input per objective on the test "
        "split) and the test mean of the run's export (export --knee's rule on held-out scores)",
    )
    p.add_argument(
        "--limit-trials",
        type=int,
        default=0,
        help="with --test: also run --limit-sampler for this many trials (the limit: the best "
        "test mean a longer search finds; 0: none)",
    )
    p.add_argument("--limit-sampler", default="nsga2+fw", help="variant of the --limit-trials run")
    p.add_argument(
        "--split-limit",
        type=int,
        default=None,
        help="with --test: examples per task on the held-out and test splits (default: all)",
    )
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return p.parse_args(argv)


def simplex_grid(n: int, k: int) -> list[list[float]]:
    """Every weight vector of ``n`` entries in ``{0, 1/k, ..., 1}`` summing to 1 (stars, bars)."""
    out = []
    for bars in combinations(range(k + n - 1), n - 1):
        edges = (-1, *bars, k + n - 1)
        out.append([(edges[i + 1] - edges[i] - 1) / k for i in range(n)])
    return out


def grid_size(n: int, k: int) -> int:
    from math import comb

    return comb(n + k - 1, n - 1)


def grid_applies(space: Any) -> bool:
    """The grid covers the space: one normalized weight per checkpoint, nothing else searched."""
    fixed = dict(space.fixed)
    return (
        space.uses_weights
        and space.n_groups == 1
        and not space.searched
        and fixed.get("normalize") is True
        and (space.simplex or (space.weight_low <= 0.0 and space.weight_high > 0.0))
    )


# Used when --config does not exist: the demo study's objectives (README).
DEFAULT_STUDY: dict[str, Any] = {
    "merge": {
        "method": "linear",
        "layer_groups": 1,
        "weights": {"low": 0.0, "high": 1.0, "normalize": True},
    },
    "objectives": [
        {
            "name": "instruction_following",
            "direction": "maximize",
            "tasks": [{"task": "demo_instruct", "metric": "exact_match"}],
        },
        {
            "name": "code",
            "direction": "maximize",
            "tasks": [{"task": "demo_code", "metric": "exact_match"}],
        },
    ],
    "eval": {"limit": 100, "batch_size": 32},
    "device": "auto",
    "dtype": "float32",
}


def load_base(args: argparse.Namespace) -> dict[str, Any]:
    """The study settings (--config, else the demo's) over the pool of --zoo (built if missing)."""
    from search.zoo.build import MANIFEST, ZooManifest, build_zoo

    found = Path(args.zoo) / MANIFEST
    if found.is_file():  # use an existing pool as it is, even if the zoo recipe changed since
        manifest = ZooManifest.from_json(Path(args.zoo), json.loads(found.read_text()))
    else:
        manifest = build_zoo(args.zoo, size=args.zoo_size)
    print(f"pool {args.zoo}: zoo recipe key {manifest.key} ({manifest.size})", file=sys.stderr)
    config = Path(args.config)
    data = yaml.safe_load(config.read_text()) if config.is_file() else dict(DEFAULT_STUDY)
    data.update(
        checkpoints=[str(p) for p in manifest.checkpoints],
        base_model=str(manifest.base),
        tasks_path=str(manifest.tasks_path),
        seed_trials=[],
        constraints=[],
    )
    # every trial scored in full: this compares samplers (search_efficiency.py compares scoring)
    data["eval"] = {**(data.get("eval") or {}), "racing": None}
    if args.limit is not None:
        data["eval"] = {**(data.get("eval") or {}), "limit": args.limit}
    return data


def parse_variant(variant: str) -> tuple[str, list[str]]:
    """``"nsga2+fw"`` -> (``"nsga2"``, ``["fw"]``): the sampler and its seed trials."""
    sampler, _, seeds = variant.partition("+")
    return sampler, [seeds] if seeds else []


def run_config(
    base: dict[str, Any], workdir: Path, variant: str, seed: int, args: argparse.Namespace
) -> Path:
    sampler, seed_trials = parse_variant(variant)
    options: dict[str, Any] = {}
    if sampler == "nsga2":
        options["population_size"] = args.population or max(4, args.trials // 5)
    name = f"bench-{variant.replace('+', '-')}-{base['merge']['method']}-s{seed}"
    data = {
        **base,
        "name": name,
        "storage": f"sqlite:///{workdir / name}.db",
        "sampler": {"name": sampler, "seed": seed, "options": options},
        "budget": {"n_trials": args.trials, "timeout_s": None},
        "seed_trials": seed_trials,
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_study(
    config_path: Path, runtime: Any, proposals: Any = None
) -> tuple[list[list[float]], float, list[str]]:
    """One study to its budget through the study service.

    Returns:
        (values of completed trials in trial order, seconds, their seed_trial labels or "").
    """
    from optuna.trial import TrialState

    from search.study.record import TrialRecord

    start = time.perf_counter()
    study = _study.run_study(config_path, runtime, proposals)
    done = [TrialRecord.from_trial(t) for t in study.get_trials(states=(TrialState.COMPLETE,))]
    info = [(r.seed_trial or "", r.plan) for r in done]
    return [list(t.values) for t in done], time.perf_counter() - start, info


def score_values(runtime: Any, cfg: Any, plan: Any) -> list[float]:
    scores, _, _ = runtime.score(plan)
    return [float(scores.objectives[n]) for n in cfg.objective_names]


def main(argv: list[str] | None = None) -> int:
    import optuna

    from search.study.config import load_config
    from search.study.space import SearchSpace
    from search.study.worker import Runtime

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = parse_args(argv)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    fisher_samplers = [s.strip() for s in args.fisher_samplers.split(",") if s.strip()]
    at = sorted({int(n) for n in args.at.split(",") if n.strip()} | {args.trials})
    base = load_base(args)
    tmp = (
        tempfile.TemporaryDirectory(prefix="merge-search-bench-") if args.workdir is None else None
    )
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)

    cfg_path = run_config(base, workdir, "random", 0, args)
    fcfg_path = None
    cfg = load_config(cfg_path)
    directions = cfg.directions
    t0 = time.perf_counter()
    runtime = Runtime.create(cfg)
    counts = getattr(runtime.evaluator, "examples_per_task", dict)()
    n_examples = min(counts.values()) if counts else 0
    space = SearchSpace.build(cfg, runtime.pool.names)
    print(
        f"pool: {len(space.names)} checkpoints ({', '.join(space.names)}); method {space.method}; "
        f"objectives {', '.join(cfg.objective_names)}; eval.limit {cfg.eval.limit}; "
        f"runtime ready in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
        flush=True,
    )

    # baselines: the inputs alone and the uniform average, as the study's seed trials define them
    baselines = {
        label: score_values(runtime, cfg, space.plan(params))
        for label, params in space.seed_trials(["uniform", "singles"])
    }

    grid_values: list[list[float]] = []
    grid_k = 0
    if args.grid_max > 0 and grid_applies(space):
        n = len(space.names)
        while grid_size(n, grid_k + 1) <= args.grid_max:
            grid_k += 1
    if grid_k:
        t1 = time.perf_counter()
        points = simplex_grid(len(space.names), grid_k)
        for i, w in enumerate(points):
            plan = space.plan(space.weight_values(w))
            grid_values.append(score_values(runtime, cfg, plan))
            if (i + 1) % 25 == 0:
                print(f"grid {i + 1}/{len(points)}", file=sys.stderr, flush=True)
        print(
            f"grid k={grid_k}: {len(points)} merges in {time.perf_counter() - t1:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    proposals = None
    if any("fw" in parse_variant(v)[1] or parse_variant(v)[0] == "fw" for v in samplers):
        from search.strategies.frank_wolfe.paths import propose

        fw_cfg = load_config(run_config(base, workdir, "nsga2+fw", 0, args))
        (fw,) = [f for f in fw_cfg.strategies if f.name == "frank_wolfe"]
        proposals = propose(
            fw_cfg, fw.settings, space, runtime.pool, runtime.model, runtime.tokenizer
        )
        print(proposals.summary(), file=sys.stderr, flush=True)

    runs: list[dict[str, Any]] = []
    for variant in samplers:
        # the fw sampler is deterministic: one run stands for every seed
        for seed in range(1 if variant == "fw" else args.seeds):
            values, seconds, labels = run_study(
                run_config(base, workdir, variant, seed, args), runtime, proposals
            )
            runs.append(
                {
                    "sampler": variant,
                    "seed": seed,
                    "values": values,
                    "seconds": seconds,
                    "labels": [label for label, _ in labels],
                    "plans": [plan for _, plan in labels],
                }
            )
            print(
                f"{variant} seed {seed}: {len(values)} trials in {seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    fisher_cost = None
    if fisher_samplers:
        fisher_base = {
            **base,
            "merge": {
                "method": "fisher",
                "weights": {"low": 0.0, "high": 1.0},
                "fisher": {
                    "tasks": "from_objectives",
                    "examples": args.fisher_examples,
                    "cache_dir": str(workdir / ".fisher"),
                },
            },
        }
        fcfg_path = run_config(fisher_base, workdir, fisher_samplers[0], 0, args)
        fcfg = load_config(fcfg_path)
        t2 = time.perf_counter()
        del runtime  # one resident model at a time
        runtime = Runtime.create(fcfg)
        fisher_cost = {
            "seconds": time.perf_counter() - t2,
            "backward_passes": len(space.names)
            * runtime.pool.extras("fisher").info["source"]["examples"],
            "examples": runtime.pool.extras("fisher").info["source"]["examples"],
        }
        print(
            f"fisher runtime (Fishers of {len(space.names)} checkpoints x "
            f"{fisher_cost['examples']} examples) ready in {fisher_cost['seconds']:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        for variant in fisher_samplers:
            for seed in range(args.seeds):
                values, seconds, labels = run_study(
                    run_config(fisher_base, workdir, variant, seed, args),
                    runtime,
                )
                runs.append(
                    {
                        "sampler": f"{variant} (fisher)",
                        "seed": seed,
                        "values": values,
                        "seconds": seconds,
                        "labels": [label for label, _ in labels],
                        "plans": [plan for _, plan in labels],
                    }
                )
                print(
                    f"{variant} (fisher) seed {seed}: {len(values)} trials in {seconds:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        samplers = [*samplers, *(f"{v} (fisher)" for v in fisher_samplers)]

    everything = grid_values + [v for r in runs for v in r["values"]] + list(baselines.values())
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]
    ref = [
        max(v[i] for v in everything) if s < 0 else min(v[i] for v in everything)
        for i, s in enumerate(signs)
    ]
    pool_points = grid_values + [v for r in runs for v in r["values"]]
    reference_front = [pool_points[i] for i in pareto_front(pool_points, directions)]
    hv_ref = hypervolume(reference_front, directions, ref)

    best_baseline = max(mean_obj(v, directions) for v in baselines.values())
    for r in runs:
        front = [
            list(v)
            for v in dict.fromkeys(
                tuple(r["values"][i]) for i in pareto_front(r["values"], directions)
            )
        ]
        r["front"] = front
        r["hv_ratio"] = hypervolume(front, directions, ref) / hv_ref if hv_ref > 0 else float("nan")
        r["best_mean"] = max(mean_obj(v, directions) for v in front)
        r["beats_on_mean"] = r["best_mean"] > best_baseline
        r["dominates_all"] = all(
            any(dominates(f, b, directions) for f in front) for b in baselines.values()
        )
        r["hv_at"] = {
            n: hypervolume(
                [r["values"][i] for i in pareto_front(r["values"][:n], directions)],
                directions,
                ref,
            )
            / hv_ref
            if hv_ref > 0
            else float("nan")
            for n in at
        }

    print_table(
        args, cfg, baselines, grid_k, len(grid_values), reference_front, ref, hv_ref, runs, samplers
    )
    test_report = None
    if args.test:
        limit_run = None
        if args.limit_trials:
            long_args = argparse.Namespace(**{**vars(args), "trials": args.limit_trials})
            values, seconds, labels = run_study(
                run_config(base, workdir, args.limit_sampler, 0, long_args), runtime, proposals
            )
            limit_run = {
                "sampler": f"{args.limit_sampler} x{args.limit_trials}",
                "seed": 0,
                "values": values,
                "seconds": seconds,
                "plans": [plan for _, plan in labels],
            }
            print(f"limit run: {len(values)} trials in {seconds:.0f} s", file=sys.stderr)
        del runtime  # one resident model per split below
        split_cfg = cfg
        if args.split_limit is not None:
            split_eval = cfg.eval.model_copy(update={"limit": args.split_limit})
            split_cfg = cfg.model_copy(update={"eval": split_eval})
        test_report = verdict_table(runs, samplers, split_cfg, directions, space, limit_run)
    print_at_table(runs, samplers, at)
    if args.heldout:
        heldout_table(runs, samplers, load_config(fcfg_path or cfg_path), directions)
    trial_s = statistics.fmean(
        r["seconds"] / max(1, len(r["values"])) for r in runs if "fisher" not in r["sampler"]
    )
    if proposals is not None:
        record = proposals.record
        print(
            f"\nFrank-Wolfe paths: {len(record['paths'])} x {record['steps']} steps, "
            f"{record['gradient_evaluations']} gradient evaluations, "
            f"{record['backward_passes']} backward passes, {record['seconds']:.1f} s "
            f"= {record['seconds'] / trial_s:.1f} lm-eval trials' worth "
            f"(one trial: {trial_s:.2f} s)"
        )
        fw_runs = [r for r in runs if r["sampler"] == "fw"]
        for r in fw_runs[:1]:
            print(f"  endpoints (exact match ± standard error, n={n_examples} per task):")
            for label, v in zip(r["labels"], r["values"], strict=True):
                scores = ", ".join(
                    f"{n}={x:.3f}±{proportion_se(x, n_examples):.3f}"
                    for n, x in zip(cfg.objective_names, v, strict=True)
                )
                print(f"  {label}: {scores}")
    if fisher_cost is not None:
        print(
            f"\nFishers: {fisher_cost['backward_passes']} backward passes in "
            f"{fisher_cost['seconds']:.1f} s (with loading the runtime) = "
            f"{fisher_cost['seconds'] / trial_s:.1f} lm-eval trials' worth"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "objectives": cfg.objective_names,
                    "directions": directions,
                    "baselines": baselines,
                    "grid_k": grid_k,
                    "grid_values": grid_values,
                    "reference_point": ref,
                    "reference_front": reference_front,
                    "reference_hv": hv_ref,
                    "runs": runs,
                    "fw": proposals.record if proposals is not None else None,
                    "fisher_cost": fisher_cost,
                    "test": test_report,
                },
                indent=1,
            )
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


def mean_obj(values: list[float], directions: list[str]) -> float:
    """Mean of the objectives, minimized ones negated (higher is better)."""
    return statistics.fmean(
        x if d == "maximize" else -x for x, d in zip(values, directions, strict=True)
    )


def print_table(
    args, cfg, baselines, grid_k, n_grid, reference_front, ref, hv_ref, runs, samplers
) -> None:
    names = cfg.objective_names
    print(
        f"\nsearch quality: {args.trials} trials per run, {args.seeds} seed(s) per sampler, "
        f"eval.limit {cfg.eval.limit}"
    )
    source = f"grid k={grid_k} ({n_grid} merges) + all runs" if grid_k else "union of all runs"
    print(
        f"reference front: {len(reference_front)} points from {source}; reference point "
        + ", ".join(f"{n}={v:.3f}" for n, v in zip(names, ref, strict=False))
        + f"; reference HV {hv_ref:.4f}"
    )
    print(
        "baselines (mean of objectives): "
        + ", ".join(f"{label} {mean_obj(v, cfg.directions):.3f}" for label, v in baselines.items())
    )
    head = [
        "sampler",
        "HV ratio (mean)",
        "min..max",
        "front size",
        "best mean obj.",
        "beats on mean",
        "dominates all",
        "s/run",
    ]
    rows = [head]
    for s in samplers:
        rs = [r for r in runs if r["sampler"] == s]
        hv = [r["hv_ratio"] for r in rs]
        rows.append(
            [
                s,
                f"{statistics.fmean(hv):.3f}",
                f"{min(hv):.3f}..{max(hv):.3f}",
                f"{statistics.fmean(len(r['front']) for r in rs):.1f}",
                f"{statistics.fmean(r['best_mean'] for r in rs):.3f}",
                f"{sum(r['beats_on_mean'] for r in rs)}/{len(rs)}",
                f"{sum(r['dominates_all'] for r in rs)}/{len(rs)}",
                f"{statistics.fmean(r['seconds'] for r in rs):.0f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)))


def proportion_se(p: float, n: int) -> float:
    """Standard error of a proportion (exact match, accuracy) measured on ``n`` examples."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def heldout_table(
    runs: list[dict[str, Any]], samplers: list[str], cfg: Any, directions: list[str]
) -> None:
    """Every run's front re-scored on the held-out tasks: its hypervolume there.

    One held-out runtime scores every distinct front merge once (built from ``cfg``: the fisher
    config when fisher runs exist, whose pool holds the Fishers and merges linear plans too).
    The reference point is the worst held-out value over everything re-scored.
    """
    from search.engine.plan import MergePlan
    from search.study.worker import Runtime

    if not cfg.eval.heldout:
        print("\n(no eval.heldout in the config: no held-out re-scores)")
        return
    runtime = Runtime.create(cfg, "heldout")
    scored: dict[str, list[float]] = {}
    for r in runs:
        front = list(dict.fromkeys(pareto_front(r["values"], directions)))
        r["heldout_front"] = []
        for i in front:
            plan = MergePlan.from_dict(r["plans"][i])
            if plan.key not in scored:
                scores, _, _ = runtime.score(plan)
                scored[plan.key] = [float(scores.objectives[n]) for n in runtime.objective_names]
            r["heldout_front"].append(scored[plan.key])
    everything = list(scored.values())
    ref = [
        min(v[i] for v in everything) if d == "maximize" else max(v[i] for v in everything)
        for i, d in enumerate(directions)
    ]
    for r in runs:
        r["heldout_hv"] = hypervolume(r["heldout_front"], directions, ref)
    counts = getattr(runtime.evaluator, "examples_per_task", dict)()
    print(
        f"\nfronts re-scored on the held-out tasks ({len(scored)} merges, "
        f"{min(counts.values()) if counts else '?'} examples per task); reference point "
        + ", ".join(f"{v:.3f}" for v in ref)
    )
    base = {
        s: statistics.fmean(r["heldout_hv"] for r in runs if r["sampler"] == s) for s in samplers
    }
    for s in samplers:
        hv = [r["heldout_hv"] for r in runs if r["sampler"] == s]
        sd = statistics.stdev(hv) if len(hv) > 1 else 0.0
        ratio = f"{base[s] / base['nsga2']:.3f}" if base.get("nsga2") else "-"
        print(f"  {s:<24} held-out HV {base[s]:.4f}±{sd:.4f}  / nsga2 {ratio}")


def paired_lead(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """Mean over the score keys of ``a - b`` (per-example values on the same examples) and its
    paired standard error (keys are disjoint tasks: independent)."""
    diffs, var_sum = [], 0.0
    for key in a:
        d = [x - y for x, y in zip(a[key], b[key], strict=True)]
        diffs.append(statistics.fmean(d))
        var_sum += statistics.variance(d) / len(d) if len(d) > 1 else 0.0
    return statistics.fmean(diffs), math.sqrt(var_sum) / len(diffs)


def verdict_table(
    runs: list[dict[str, Any]],
    samplers: list[str],
    cfg: Any,
    directions: list[str],
    space: Any,
    limit_run: dict[str, Any] | None,
) -> dict[str, Any]:
    """Every run's front on the held-out and test splits; the run's export and its test mean.

    The export is what ``export --knee`` picks (:data:`search.report.frontier.KNEE_RULE`) among
    the front's members Pareto-optimal on their held-out scores, against the uniform merge's
    held-out scores.
    The test hypervolume's reference point is the worst input on each objective (test split).
    Each distinct plan is scored once per split.
    """
    from search.engine.plan import MergePlan
    from search.report.frontier import knee_point
    from search.study.worker import Runtime

    seeds = dict(space.seed_trials(["uniform", "singles"]))
    base_plans = {label: space.plan(params) for label, params in seeds.items()}
    cache: dict[tuple[str, str], Any] = {}

    def scored(runtime: Any, split: str, plan: Any) -> Any:
        if (split, plan.key) not in cache:
            scores, _, _ = runtime.score(plan)
            cache[split, plan.key] = scores
        return cache[split, plan.key]

    def values(scores: Any) -> list[float]:
        return [float(scores.objectives[n]) for n in cfg.objective_names]

    everyone = [*runs, *([limit_run] if limit_run else [])]
    for r in everyone:
        r["front_plans"] = list(
            {
                MergePlan.from_dict(r["plans"][i]).key: MergePlan.from_dict(r["plans"][i])
                for i in pareto_front(r["values"], directions)
            }.values()
        )
    held_rt = Runtime.create(cfg, split="heldout")
    uniform_held = values(scored(held_rt, "heldout", base_plans["uniform"]))
    for r in everyone:
        held = [values(scored(held_rt, "heldout", p)) for p in r["front_plans"]]
        own = pareto_front(held, directions)
        pick = own[knee_point([held[i] for i in own], directions, uniform_held)]
        r["export_plan"] = r["front_plans"][pick]
        r["export_heldout"] = held[pick]
    del held_rt
    test_rt = Runtime.create(cfg, split="test")
    base_test = {label: scored(test_rt, "test", p) for label, p in base_plans.items()}
    inputs = [values(v) for k, v in base_test.items() if k != "uniform"]
    ref = [
        min(v[i] for v in inputs) if d == "maximize" else max(v[i] for v in inputs)
        for i, d in enumerate(directions)
    ]
    uniform_t = base_test["uniform"]
    best_input = max(
        (k for k in base_test if k != "uniform"),
        key=lambda k: mean_obj(values(base_test[k]), directions),
    )
    for r in everyone:
        test_front = [values(scored(test_rt, "test", p)) for p in r["front_plans"]]
        r["test_hv"] = hypervolume(test_front, directions, ref)
        r["test_best_mean"] = max(mean_obj(v, directions) for v in test_front)
        chosen = scored(test_rt, "test", r["export_plan"])
        r["export_test"] = values(chosen)
        r["export_test_mean"] = mean_obj(r["export_test"], directions)
        r["export_vs_uniform"] = paired_lead(chosen.examples, uniform_t.examples)
        r["export_vs_best_input"] = paired_lead(chosen.examples, base_test[best_input].examples)
        r.pop("front_plans")
        r["export_plan"] = r["export_plan"].to_dict()
    n = min(len(v) for v in uniform_t.examples.values())
    uniform_mean = mean_obj(values(uniform_t), directions)
    print(
        f"\ntest split ({n} examples per task; {len(cache)} split scorings): hypervolume of each "
        "run's front re-scored on the test split, reference = worst input per objective ("
        + ", ".join(f"{v:.3f}" for v in ref)
        + f"); export = the held-out knee (export --knee's rule). Uniform merge "
        f"test mean {uniform_mean:.4f}; best input {best_input} "
        f"{mean_obj(values(base_test[best_input]), directions):.4f}"
    )
    head = [
        "variant",
        "test HV (mean±sd)",
        "/random",
        "export test mean",
        "export − uniform",
        "export − best input",
        "best front test mean",
    ]
    rows = [head]
    random_hv = [r["test_hv"] for r in runs if r["sampler"] == "random"]
    for s in samplers:
        rs = [r for r in runs if r["sampler"] == s]
        hv = [r["test_hv"] for r in rs]
        sd = statistics.stdev(hv) if len(hv) > 1 else 0.0
        denominator = statistics.fmean(random_hv) if random_hv else 0.0
        ratio = statistics.fmean(hv) / denominator if denominator > 0 else float("nan")
        em = [r["export_test_mean"] for r in rs]
        leads = "; ".join(f"{d:+.3f}±{se:.3f}" for d, se in (r["export_vs_uniform"] for r in rs))
        leads_b = "; ".join(
            f"{d:+.3f}±{se:.3f}" for d, se in (r["export_vs_best_input"] for r in rs)
        )
        rows.append(
            [
                f"{s} ({len(rs)})",
                f"{statistics.fmean(hv):.4f}±{sd:.4f}",
                f"{ratio:.3f}",
                f"{statistics.fmean(em):.4f} ({', '.join(f'{x:.3f}' for x in em)})",
                leads,
                leads_b,
                f"{statistics.fmean(r['test_best_mean'] for r in rs):.4f}",
            ]
        )
    if limit_run:
        rows.append(
            [
                limit_run["sampler"],
                f"{limit_run['test_hv']:.4f}",
                "",
                f"{limit_run['export_test_mean']:.4f}",
                "{:+.3f}±{:.3f}".format(*limit_run["export_vs_uniform"]),
                "{:+.3f}±{:.3f}".format(*limit_run["export_vs_best_input"]),
                f"{limit_run['test_best_mean']:.4f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    return {
        "reference": ref,
        "uniform_mean": uniform_mean,
        "best_input": best_input,
        "limit": limit_run,
    }


def print_at_table(runs: list[dict[str, Any]], samplers: list[str], at: list[int]) -> None:
    """HV ratio of the first n trials, mean ± sd over seeds, and against nsga2 / random."""
    means = {
        (s, n): statistics.fmean(r["hv_at"][n] for r in runs if r["sampler"] == s)
        for s in samplers
        for n in at
    }
    head = ["variant", *(f"HV@{n}" for n in at)]
    for other in ("nsga2", "random"):
        if other in samplers:
            head += [f"/{other}@{n}" for n in at]
    rows = [head]
    for s in samplers:
        rs = [r for r in runs if r["sampler"] == s]
        row = [f"{s} ({len(rs)} run{'s' if len(rs) > 1 else ''})"]
        for n in at:
            values = [r["hv_at"][n] for r in rs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            row.append(f"{means[(s, n)]:.3f}±{sd:.3f}")
        for other in ("nsga2", "random"):
            if other in samplers:
                row += [f"{means[(s, n)] / means[(other, n)]:.3f}" for n in at]
        rows.append(row)
    print("\nHV ratio of the first n trials (mean±sd over seeds) and ratio of means:")
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)))


if __name__ == "__main__":
    sys.exit(main())
