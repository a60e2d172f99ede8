"""Estimated scoring measured offline: replay a finished study's trials from a few examples each.

A study that scored every trial in full (``examples`` on every trial: per-example values) holds
the truth the estimator is measured against. For every trial that is not a seed trial and was
scored in full, in trial order, per score key (task/metric) of N examples:

1. a prediction model (``search.strategies.estimate.predict``) is fitted on the inputs' full
   values (the seed trials that score one checkpoint alone) and on earlier trials only
   (``--history``: ``all`` earlier trials scored in full; ``front``: only the earlier trials on
   the front of their time and the seed trials — what a study whose front members are scored
   in full would have; ``seeds``: the seed trials alone; ``shared``: every earlier trial but
   only at the shared examples, with the models' ``partial`` switch — the leak the models avoid
   by default, measured);
2. for each of ``--orders`` study orders (a seeded permutation per task), the trial "scores"
   the first n of the order (``--sizes``) and its estimate is the difference estimator
   (``search.strategies.estimate.estimate``) against its full-split mean.

Printed per key, model, history and n: the fraction of examples scored, bias, RMSE, the RMSE
of the plain mean of the same n examples and the ratio, the coverage of the 95 % interval, the
mean SE, and the correlation between predicted and observed per-example values. Trials of one
order share its examples, so their errors are correlated: every SE here is over orders (mean
per order, its spread over orders; ratios by a bootstrap over orders).

    python bench/estimate.py offline sqlite:////path/study.db --orders 50

Online (``online``): two studies of ``--config`` (the demo's) on ``--zoo``, run in this process
through the study service with one resident runtime, same sampler and seed, staged scoring off:
full evaluation, and ``eval.estimate`` (``--n``, ``--audit``, ``--fit``, ``--max-share``,
``--promote``, ``--model``). Printed: examples scored per sampler trial and over the whole study
as a share of full evaluation, stopped trials, merge and scoring seconds per trial; calibration
(``--calibrate`` sampler trials of the estimated study also scored in full: bias, RMSE, mean SE
and coverage of the 95 % interval with each of ``--sizes`` examples of the shared order per task
and the trial's own audit draw, from the model the scorer had before the trial, as the scorer
estimates; trials that share a prefix share its luck, so their errors are correlated); on the
test split, each study's front re-scored, its hypervolume against the worst input, and the
held-out knee's export against the uniform merge and its weakest lead over the inputs (paired
SE); the same for the full study cut at the examples the estimated one spent. Studies are kept
in ``--workdir`` and reused, and so are the re-scores (``scores-s<seed>.pkl``).

    python bench/estimate.py online --zoo studies/zoo --workdir /tmp/est --trials 40
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without install

from search.strategies.estimate import (  # noqa: E402
    Design,
    History,
    build_model,
    difference_estimate,
)

HISTORIES = ("all", "front", "seeds", "shared")


@dataclass
class Trial:
    number: int
    weights: np.ndarray  # (K,) normalized, per checkpoint (mean over layer groups)
    values: dict[str, np.ndarray]  # key -> (N,) full per-example values
    seed: bool
    objectives: tuple[float, ...]


def load(storage: str, study_name: str | None) -> tuple[list[str], list[Trial], list[bool]]:
    """The checkpoint names, the fully scored distinct trials, the objectives' directions."""
    import optuna
    from optuna.trial import TrialState

    from search.study.record import TrialRecord

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = optuna.get_all_study_names(storage)
    if study_name is None:
        if len(names) != 1:
            sys.exit(f"--study: the storage holds {names}; name one")
        study_name = names[0]
    study = optuna.load_study(study_name=study_name, storage=storage)
    maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    checkpoints: list[str] | None = None
    out: list[Trial] = []
    stopped_inputs: list[str] = []
    sizes: dict[str, int] = {}  # examples per key, from the first trial scored in full
    for t in sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        r = TrialRecord.from_trial(t)
        if r.duplicate_of is not None or not r.coefficients:
            continue
        checkpoints = checkpoints or list(r.coefficients)
        w = np.array([np.mean(r.coefficients[c]) for c in checkpoints], float)
        w = w / w.sum()
        values = {k: np.asarray(v, float) for k, v in r.per_example().items()}
        if not values or r.stopped:
            if r.seed_trial is None or not np.isclose(w.max(), 1.0) or not sizes:
                continue  # no truth to measure against
            # an input that staged scoring stopped: its mean over the examples it scored,
            # as a constant row (what the models can know of it)
            values = {k: np.full(sizes[k], v) for k, v in r.task_scores.items()}
            stopped_inputs.append(r.seed_trial)
        sizes = sizes or {k: len(v) for k, v in values.items()}
        out.append(Trial(r.number, w, values, r.seed_trial is not None, r.values))
    if not out:
        sys.exit(f"{storage}: no trial with per-example values (examples) to replay")
    if stopped_inputs:
        print(
            f"inputs stopped by staged scoring, stood in for by their partial means: "
            f"{', '.join(stopped_inputs)}"
        )
    return checkpoints or [], out, maximize


def on_front(points: list[tuple[float, ...]], maximize: list[bool]) -> list[bool]:
    signs = np.where(np.asarray(maximize), 1.0, -1.0)
    p = np.asarray(points, float) * signs
    return [not np.any(np.all(p >= q, axis=1) & np.any(p > q, axis=1)) for q in p]


def history_rows(
    earlier: list[Trial], key: str, mode: str, maximize: list[bool], shared: np.ndarray | None
) -> History:
    """The rows a model may use for the next trial under ``mode`` (see the module)."""
    rows = [t for t in earlier if not is_input(t)]
    if mode == "seeds":
        rows = [t for t in rows if t.seed]
    elif mode == "front" and rows:
        flags = on_front([t.objectives for t in rows], maximize)
        rows = [t for t, f in zip(rows, flags, strict=True) if f or t.seed]
    n = len(earlier[0].values[key])
    k = len(earlier[0].weights)
    if not rows:
        return History.empty(k, n)
    w = np.array([t.weights for t in rows])
    v = np.array([t.values[key] for t in rows])
    mask = np.ones_like(v, bool)
    if mode == "shared":
        seeded = np.array([t.seed for t in rows])
        mask[~seeded] = False  # sampler's trials: only their shared examples were scored
        mask[np.ix_(~seeded, shared)] = True
    return History(w, v, mask)


def is_input(t: Trial) -> bool:
    return t.seed and np.isclose(t.weights.max(), 1.0)


def replay(args: argparse.Namespace) -> None:
    checkpoints, trials, maximize = load(args.storage, args.study)
    inputs_t = sorted((t for t in trials if is_input(t)), key=lambda t: int(np.argmax(t.weights)))
    if len(inputs_t) != len(checkpoints):
        sys.exit(
            f"{args.storage}: {len(inputs_t)} input seed trials for {len(checkpoints)} "
            "checkpoints; the estimator fits on every input's full scores"
        )
    keys = sorted(inputs_t[0].values)
    targets = [t for t in trials if not t.seed]
    print(
        f"study: {args.storage}  checkpoints: {len(checkpoints)}  fully scored trials: "
        f"{len(trials)} ({len(targets)} not seeds, replayed)  orders: {args.orders}"
    )
    for key in keys:
        inputs = np.array([t.values[key] for t in inputs_t])
        n_total = inputs.shape[1]
        orders = [
            Design(seed=s, shared=n_total).sample(key, n_total, 0)[0] for s in range(args.orders)
        ]
        print(
            f"\n{key}: N = {n_total}; trials' full-split means "
            f"{np.mean([t.values[key].mean() for t in targets]):.3f} on average"
        )
        header = (
            f"{'model':9} {'history':7} {'n':>3} {'frac':>5} {'bias':>15} {'RMSE':>15} "
            f"{'plain RMSE':>15} {'ratio':>13} {'cover95':>13} {'mean SE':>7} {'corr':>5}"
        )
        print(header)
        for mode in args.history:
            for name in args.models:
                rows = measure(args, key, name, mode, trials, targets, inputs, orders, maximize)
                for line in rows:
                    print(line)


def measure(args, key, name, mode, trials, targets, inputs, orders, maximize) -> list[str]:
    n_total = inputs.shape[1]
    sizes = args.sizes
    err = np.zeros((len(sizes), len(orders), len(targets)))
    plain = np.zeros_like(err)
    cover = np.zeros_like(err)
    ses = np.zeros_like(err)
    pred_all, obs_all = [], []
    for i, t in enumerate(targets):
        earlier = [e for e in trials if e.number < t.number]
        y = t.values[key]
        truth = y.mean()
        fitted = None
        for r, order in enumerate(orders):
            for s, n in enumerate(sizes):
                sample = order[:n]
                if mode == "shared" or fitted is None:
                    hist = history_rows(earlier, key, mode, maximize, sample)
                    model = build_model(
                        name,
                        **({"partial": True} if mode == "shared" and name != "mixture" else {}),
                    )
                    p = model.fit(inputs, hist).predict(t.weights)[0]
                    if mode != "shared":
                        fitted = p
                else:
                    p = fitted
                e = difference_estimate(
                    p, y, sample, prior_variance=float(np.mean(p * (1 - p))), prior_df=args.prior_df
                )
                err[s, r, i] = e.mean - truth
                ses[s, r, i] = e.se
                lo, hi = e.interval()
                cover[s, r, i] = lo <= truth <= hi
                plain[s, r, i] = y[sample].mean() - truth
                if r == 0 and s == 0:
                    pred_all.append(p)
                    obs_all.append(y)
    corr = float(np.corrcoef(np.ravel(pred_all), np.ravel(obs_all))[0, 1])
    rng = np.random.default_rng(0)
    boot = rng.integers(0, len(orders), (args.boot, len(orders)))
    lines = []
    for s, n in enumerate(sizes):
        per_order_bias = err[s].mean(axis=1)
        mse_o = (err[s] ** 2).mean(axis=1)
        pmse_o = (plain[s] ** 2).mean(axis=1)
        cov_o = cover[s].mean(axis=1)
        rmse, prmse = math.sqrt(mse_o.mean()), math.sqrt(pmse_o.mean())
        ratios = np.sqrt(mse_o[boot].mean(axis=1) / pmse_o[boot].mean(axis=1))
        sq = math.sqrt(len(orders))
        lines.append(
            f"{name:9} {mode:7} {n:3d} {n / n_total:5.3f} "
            f"{per_order_bias.mean():+.4f}±{per_order_bias.std(ddof=1) / sq:.4f} "
            f"{rmse:.4f}±{mse_o.std(ddof=1) / sq / (2 * rmse):.4f} "
            f"{prmse:.4f}±{pmse_o.std(ddof=1) / sq / (2 * prmse):.4f} "
            f"{rmse / prmse:.3f}±{ratios.std(ddof=1):.3f} "
            f"{cov_o.mean():.3f}±{cov_o.std(ddof=1) / sq:.3f} "
            f"{ses[s].mean():7.4f} {corr:5.3f}"
        )
    return lines


# ------------------------------------------------------------------------------------- online


def study_data(args: argparse.Namespace, name: str, estimate: dict | None) -> dict:
    """The demo config on ``--zoo``: staged scoring off, the sampler and seed given, and
    ``eval.estimate`` set (or not)."""
    import _study
    import yaml

    data = _study.on_pool(yaml.safe_load(Path(args.config).read_text()), Path(args.zoo))
    data["tasks_path"] = str(REPO / yaml.safe_load(Path(args.config).read_text())["tasks_path"])
    ev = {k: v for k, v in (data.get("eval") or {}).items() if k not in ("staged", "racing")}
    if estimate is not None:
        ev["estimate"] = estimate
    data.update(
        name=name,
        storage=f"sqlite:///{Path(args.workdir).resolve() / name}.db",
        eval=ev,
        sampler={"name": args.sampler, "seed": args.seed, "options": {}},
        budget={"n_trials": args.trials, "timeout_s": None},
    )
    return data


def run(args: argparse.Namespace, runtime, name: str, estimate: dict | None) -> list:
    """One study through the study service (or its records, when its storage holds it)."""
    import _study
    import optuna
    import yaml
    from optuna.trial import TrialState

    from search.study.record import TrialRecord

    path = Path(args.workdir) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study_data(args, name, estimate), sort_keys=False))
    db = Path(args.workdir) / f"{name}.db"
    if db.exists():
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db.resolve()}")
        print(f"{name}: read from {db}", file=sys.stderr)
    else:
        start = time.perf_counter()
        study = _study.run_study(path, runtime)
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    return [TrialRecord.from_trial(t) for t in done]


def online(args: argparse.Namespace) -> None:
    """Two studies of the demo config, full evaluation and estimated scoring, compared."""
    import optuna

    sys.path.insert(0, str(REPO / "bench"))
    from search_quality import mean_obj, paired_lead

    from evaluators.base import Scores
    from search.engine.plan import MergePlan
    from search.report.frontier import hypervolume, knee_point, pareto_front
    from search.strategies.estimate.scorer import EstimateScorer
    from search.study.config import load_config
    from search.study.worker import Runtime

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    estimate = {
        "n": args.n,
        "audit": args.audit,
        "fit": args.fit,
        "model": args.model,
        "confidence": args.confidence,
        "max_share": args.max_share,
        "promote": args.promote,
    }
    full_name = f"full-s{args.seed}"
    est_name = (
        f"estimate-n{args.n}-a{args.audit}-{args.fit}-{args.model}-m{args.max_share:g}"
        f"-p{args.promote:g}-s{args.seed}"
    )
    cfg_path = Path(args.workdir) / f"{est_name}.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(study_data(args, est_name, estimate), sort_keys=False))
    cfg = load_config(cfg_path)
    directions = cfg.directions
    runtime = Runtime.create(cfg)
    per_eval = runtime.examples_per_evaluation()
    runs = {
        "full": run(args, runtime, full_name, None),
        "estimate": run(args, runtime, est_name, estimate),
    }

    print(
        f"\n{args.trials} trials, sampler {args.sampler} seed {args.seed}, eval.estimate {estimate}"
    )
    print(f"a full evaluation: {per_eval} examples")
    print(
        f"{'study':9} {'per sampler trial':>24} {'whole study':>12} {'stopped':>8} "
        f"{'merge s':>8} {'eval s':>7} {'per trial s':>11}"
    )
    totals = {}
    for label, records in runs.items():
        own = [r for r in records if not r.seed_trial and r.duplicate_of is None]
        ex = np.array([r.examples_scored for r in own], float)
        totals[label] = sum(r.examples_scored for r in records)
        merge = np.array([r.merge_s or 0.0 for r in own])
        ev = np.array([r.eval_s or 0.0 for r in own])
        print(
            f"{label:9} {ex.mean() / per_eval:6.3f}"
            f"± {ex.std(ddof=1) / per_eval / math.sqrt(len(ex)):.3f} "
            f"({len(own)} trials) {totals[label] / (per_eval * len(records)):12.3f} "
            f"{sum(r.stopped for r in records):8d} {merge.mean():8.3f} {ev.mean():7.3f} "
            f"{(merge + ev).mean():11.3f}"
        )
    print(f"whole study, estimate / full: {totals['estimate'] / totals['full']:.3f}")

    # ---- calibration: every sampler trial of the estimated study scored both ways, the
    # estimate at each n from the model the scorer had before that trial
    scorer = EstimateScorer(
        cfg,
        cfg.strategies[0].settings,
        runtime,
        optuna.load_study(study_name=est_name, storage=cfg.storage),
        "estimate",
    )
    import pickle

    store = Path(args.workdir) / f"scores-s{args.seed}.pkl"  # (split, plan key) -> Scores
    cache: dict[tuple[str, str], object] = {}
    if store.exists():
        cache = pickle.loads(store.read_bytes())

    def scored_on(rt, split, plan):
        if (split, plan.key) not in cache:
            cache[split, plan.key] = rt.score(plan)[0]
            store.write_bytes(pickle.dumps(cache))
        return cache[split, plan.key]

    def full_scores(plan):
        return scored_on(runtime, "search", plan)

    est_records = runs["estimate"]
    targets = [r for r in est_records if not r.seed_trial and r.duplicate_of is None][
        : args.calibrate
    ]
    rows_all = [r for r in est_records if r.duplicate_of is None]
    z95 = 1.959963984540054
    table = {n: [] for n in args.sizes}
    pred, obs = [], []
    for r in targets:
        if r.examples and not r.stopped:  # scored in full by the study: its own values
            scores = Scores(
                objectives=dict(zip(cfg.objective_names, r.values, strict=True)),
                examples=r.per_example(),
            )
        else:
            scores = full_scores(MergePlan.from_dict(r.plan))
        rows = [x for x in rows_all if x.number < r.number]
        predictions = scorer.predict(rows, r.coefficients)
        values = {k: np.asarray(scores.examples[k], float) for k in scorer.layout.leaves}
        for k in values:
            pred.append(predictions[k])
            obs.append(values[k])
        for n in args.sizes:
            # the first n of the shared order and the trial's own audit draw (as it scored them)
            scored = {
                leaf: np.union1d(
                    scorer.design.sample(leaf, size, r.number, shared=min(n, size))[0],
                    scorer.design.sample(leaf, size, r.number)[1],
                )
                for leaf, size in scorer.counts.items()
            }
            shared = {leaf: min(n, size) for leaf, size in scorer.counts.items()}
            objectives, _ = scorer.estimate(predictions, values, scored, shared)
            for o, e in zip(cfg.objective_names, objectives, strict=True):
                t = float(scores.objectives[o])
                table[n].append((e.mean - t, e.se, abs(e.mean - t) <= z95 * e.se))
    corr = float(np.corrcoef(np.ravel(pred), np.ravel(obs))[0, 1])
    print(
        f"\ncalibration: {len(targets)} sampler trials of the estimated study, each also scored "
        f"in full; per objective (2 per trial); predicted vs observed per-example r = {corr:.3f}"
    )
    print(f"{'n':>4} {'bias':>16} {'RMSE':>7} {'mean SE':>8} {'cover95':>14}")
    for n, rows in table.items():
        err = np.array([x[0] for x in rows])
        cov = np.array([x[2] for x in rows], float)
        print(
            f"{n:4d} {err.mean():+.4f}±{err.std(ddof=1) / math.sqrt(len(err)):.4f} "
            f"{math.sqrt((err**2).mean()):7.4f} {np.mean([x[1] for x in rows]):8.4f} "
            f"{cov.mean():6.3f}±{math.sqrt(cov.mean() * (1 - cov.mean()) / len(cov)):.3f}"
        )

    # ---- the test split: each study's front (scored in full; stopped trials are never on it)
    # re-scored, hypervolume with the worst input as reference; the held-out knee's verdict
    space = __import__("search.study.space", fromlist=["SearchSpace"]).SearchSpace.build(
        cfg, runtime.pool.names
    )
    seeds = dict(space.seed_trials(["uniform", "singles"]))
    base = {label: space.plan(params) for label, params in seeds.items()}

    def vals(scores):
        return [float(scores.objectives[o]) for o in cfg.objective_names]

    def front_plans(records):
        ok = [r for r in records if r.feasible]
        idx = pareto_front([list(r.values) for r in ok], directions)
        return list({ok[i].plan_key: MergePlan.from_dict(ok[i].plan) for i in idx}.values())

    fronts = {label: front_plans(records) for label, records in runs.items()}
    # the full study cut at the examples the estimated study spent (same examples scored)
    spent, cut = 0, []
    for r in runs["full"]:
        spent += r.examples_scored
        if spent > totals["estimate"]:
            break
        cut.append(r)
    fronts[f"full@{len(cut)}"] = front_plans(cut)
    held = Runtime.create(cfg, split="heldout")
    uniform_held = vals(scored_on(held, "heldout", base["uniform"]))
    exports = {}
    for label, plans in fronts.items():
        hv = [vals(scored_on(held, "heldout", p)) for p in plans]
        own = pareto_front(hv, directions)
        exports[label] = plans[own[knee_point([hv[i] for i in own], directions, uniform_held)]]
    del held
    test = Runtime.create(cfg, split="test")
    base_t = {label: scored_on(test, "test", p) for label, p in base.items()}
    inputs = [vals(v) for k, v in base_t.items() if k != "uniform"]
    ref = [
        min(v[i] for v in inputs) if d == "maximize" else max(v[i] for v in inputs)
        for i, d in enumerate(directions)
    ]
    print(f"\ntest split: reference (worst input) {[round(x, 4) for x in ref]}")
    hvs = {}
    for label, plans in fronts.items():
        hvs[label] = hypervolume([vals(scored_on(test, "test", p)) for p in plans], directions, ref)
        chosen = scored_on(test, "test", exports[label])
        leads = {k: paired_lead(chosen.examples, v.examples) for k, v in base_t.items()}
        # in SE units; an export that is one of the baselines leads it by 0 with SE 0
        z = {k: d / se if se else 0.0 for k, (d, se) in leads.items()}
        worst = min(leads, key=z.__getitem__)
        print(
            f"{label:10} test HV {hvs[label]:.4f}  export test mean "
            f"{mean_obj(vals(chosen), directions):.4f}  − uniform "
            "{:+.3f}±{:.3f}".format(*leads["uniform"])
            + f"  weakest lead: {worst} {{:+.3f}}±{{:.3f}}".format(*leads[worst])
            + f" ({z[worst]:.1f} SE)"
        )
    print(
        f"test HV ratio, estimate / full at {args.trials} trials: "
        f"{hvs['estimate'] / hvs['full']:.3f}"
    )
    print(
        f"test HV ratio, estimate / full at the same examples ({len(cut)} full trials): "
        f"{hvs['estimate'] / hvs[f'full@{len(cut)}']:.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    off = sub.add_parser("offline", help="replay a finished study's fully scored trials")
    off.add_argument("storage", help="the study's storage URL, e.g. sqlite:///studies/demo.db")
    off.add_argument("--study", default=None, help="study name (default: the only one)")
    off.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40])
    off.add_argument("--orders", type=int, default=50, help="study orders replayed (seeds)")
    off.add_argument("--models", nargs="+", default=["mixture", "kernel", "logistic"])
    off.add_argument("--history", nargs="+", default=["all", "front", "seeds"], choices=HISTORIES)
    off.add_argument(
        "--prior-df",
        type=float,
        default=5.0,
        help="weight (in residuals) of the predictions' own variance mean p(1-p) in the SE "
        "(0: the sample's alone; 5 keeps the 95%% interval's coverage near 0.95 from n = 10)",
    )
    off.add_argument("--boot", type=int, default=500, help="bootstrap draws over orders")
    on = sub.add_parser("online", help="a study with estimated scoring against full evaluation")
    on.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    on.add_argument("--zoo", default=str(REPO / "studies" / "zoo"), help="the demo pool")
    on.add_argument("--workdir", required=True, help="studies are kept (and reused) here")
    on.add_argument("--trials", type=int, default=40)
    on.add_argument("--sampler", default="gp")
    on.add_argument("--seed", type=int, default=0)
    on.add_argument("--n", type=int, default=20, help="eval.estimate.n")
    on.add_argument("--audit", type=int, default=0, help="eval.estimate.audit")
    on.add_argument("--fit", default="full", choices=("full", "scored"), help="eval.estimate.fit")
    on.add_argument("--promote", type=float, default=0.0, help="eval.estimate.promote")
    on.add_argument("--model", default="kernel")
    on.add_argument("--confidence", type=float, default=0.95)
    on.add_argument("--max-share", type=float, default=1.0, help="eval.estimate.max_share")
    on.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40, 80])
    on.add_argument("--calibrate", type=int, default=30, help="sampler trials scored both ways")
    args = parser.parse_args(argv)
    (replay if args.mode == "offline" else online)(args)


if __name__ == "__main__":
    main()
