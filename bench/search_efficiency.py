"""Staged scoring vs full evaluation, simplex vs independent weights, at an equal example budget.

On the demo pool (``--zoo``, built by ``merge-search zoo build``), for each sampler
(``--samplers``, default NSGA-II and TPE) and seed (``--seeds``), four studies run through the
study service (one worker, one resident model, temporary SQLite files), each with the same
budget in examples (``--evaluations`` full evaluations' worth: ``budget.examples``), the demo's
seed trials and the sampler's own after them:

- scoring ``full`` (every trial scores every example) or ``staged`` (``eval.racing`` as in
  ``configs/demo.yaml``: rungs of 25, 50, 100, 200 examples per task, stopped when a front
  member beats the trial on both skills with 95 % confidence);
- weights ``independent`` (K weights in [0, 1] divided by their sum) or ``simplex`` (``-log u``).

Per run it prints the trials run and stopped, the hypervolume of the front (reference point:
the worst input checkpoint on each skill, read off the first run's ``single:*`` seed trials, so
the hypervolume measures what merges add over the inputs: against (0, 0) the inputs alone
held 86 % of a demo study's final value, against the worst input 60 %; only trials scored in
full count, so the front is always on full data, never on partial estimates) after 40 trials
and at the end, the examples
scored until the hypervolume reached 95 % of the matching full-evaluation run's final value,
and, for the simplex runs, the test-split mean of the two skills of the merge ``export --knee``
would choose (knee of the front judged on its held-out re-scores) with its standard error
(``0.5 · sqrt(SE_a² + SE_b²)``). Then the ratios: full / staged examples to 95 %, staged /
full final hypervolume, simplex / independent hypervolume at 40 trials, each averaged over the
seeds.

Usage (from the repository root)::

    python bench/search_efficiency.py [--zoo studies/zoo] [--samplers nsga2 tpe]
        [--seeds 0 1 2] [--evaluations 40] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _study import on_pool, run_study  # noqa: E402

# this bench reads only local pools and tasks: keep the Hugging Face libraries off the hub
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

AT_TRIALS = 40
TARGET = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--zoo", default=str(REPO / "studies" / "zoo"))
    p.add_argument("--samplers", nargs="+", default=["nsga2", "tpe"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--evaluations", type=int, default=40, help="budget in full evaluations")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def config_for(
    args: argparse.Namespace, folder: Path, sampler: str, seed: int, scoring: str, weights: str
) -> Path:
    data = yaml.safe_load(Path(args.config).read_text())
    zoo = Path(args.zoo)
    name = f"eff-{sampler}-{seed}-{scoring}-{weights}"
    per_eval = 400  # both search tasks: 200 examples each (checked against the study below)
    options = data["sampler"].get("options", {}) if sampler == data["sampler"]["name"] else {}
    racing = data["eval"].get("racing") or {}
    data = on_pool(data, zoo)
    data.update(
        name=name,
        storage=f"sqlite:///{folder / name}.db",
        merge={**data["merge"], "weights": {"normalize": True, "parametrization": weights}},
        eval={**data["eval"], "racing": racing if scoring == "staged" else None},
        sampler={"name": sampler, "seed": seed, "options": options},
        budget={"n_trials": 20 * args.evaluations, "examples": args.evaluations * per_eval},
    )
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def completed(study: Any) -> list[Any]:
    """The study's complete trials in the order they finished."""
    from optuna.trial import TrialState

    from search.study.record import TrialRecord

    trials = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: t.datetime_complete,
    )
    return [TrialRecord.from_trial(t) for t in trials]


def inputs_nadir(study: Any) -> list[float]:
    """Per objective the worst value of the input checkpoints (the ``single:*`` seed trials
    scored in full): the hypervolume's reference point."""
    singles = [
        r.values
        for r in completed(study)
        if (r.seed_trial or "").startswith("single:") and not r.stopped
    ]
    if not singles:
        raise SystemExit("the first run scored no input checkpoint in full: no reference point")
    return [min(column) for column in zip(*singles, strict=True)]


def curve(study: Any, reference: list[float]) -> list[tuple[int, int, float]]:
    """``(trials finished, examples scored so far, hypervolume of the full-data front)``."""
    from search.report.frontier import hypervolume

    directions = ["maximize", "maximize"]
    kept: list[list[float]] = []
    out, spent = [], 0
    for i, r in enumerate(completed(study), 1):
        spent += r.examples_scored
        if not r.stopped:
            kept.append(list(r.values))
        out.append((i, spent, hypervolume(kept, directions, reference) if kept else 0.0))
    return out


def chosen_on_test(path: Path, factory: Any) -> tuple[float, float, int]:
    """The export's choice (knee on held-out re-scores): test mean, its SE, its trial."""
    from search.engine.plan import MergePlan
    from search.report.scores import score_split
    from search.report.view import open_view

    view = open_view(path)
    front = view.front()
    plans = {r.plan_key: MergePlan.from_dict(r.record.plan) for r in front}
    held = score_split(view, plans, "heldout", factory)
    by_key = {k: [held[k].objectives[n] for n in view.names] for k in plans}
    knee = view.knee_on(front, by_key)
    test = score_split(view, {knee.plan_key: plans[knee.plan_key]}, "test", factory)
    got = test[knee.plan_key]
    values = [got.objectives[n] for n in view.names]
    ses = [got.stderr[n] for n in view.names]
    return statistics.fmean(values), 0.5 * math.sqrt(sum(s * s for s in ses)), knee.number


def main(argv: list[str] | None = None) -> int:
    import optuna

    from search.study.config import load_config
    from search.study.worker import Runtime

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = parse_args(argv)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="search-efficiency-") as tmp:
        folder = Path(tmp)
        first = config_for(args, folder, args.samplers[0], 0, "full", "simplex")
        cfg = load_config(first)
        runtimes = {"search": Runtime.create(cfg)}
        per_eval = runtimes["search"].examples_per_evaluation()
        assert per_eval == 400, f"the demo's search split scores {per_eval} examples, not 400"

        def factory(cfg: Any, split: str = "search") -> Any:
            if split not in runtimes:
                runtimes[split] = Runtime.create(cfg, split)
            return runtimes[split]

        print(
            f"demo pool {args.zoo}: {len(runtimes['search'].pool.names)} checkpoints; budget "
            f"{args.evaluations} full evaluations ({args.evaluations * per_eval} examples) per run"
        )
        for sampler in args.samplers:
            for seed in args.seeds:
                for weights in ("simplex", "independent"):
                    for scoring in ("full", "staged"):
                        path = config_for(args, folder, sampler, seed, scoring, weights)
                        start = time.perf_counter()
                        study = run_study(path, runtimes["search"])
                        if not results:
                            reference = inputs_nadir(study)
                            print(f"hypervolume reference point (worst input): {reference}")
                        points = curve(study, reference)
                        stopped = sum(r.stopped for r in completed(study))
                        row: dict[str, Any] = {
                            "sampler": sampler,
                            "seed": seed,
                            "weights": weights,
                            "scoring": scoring,
                            "trials": len(points),
                            "stopped": stopped,
                            "examples": points[-1][1] if points else 0,
                            "hv_final": points[-1][2] if points else 0.0,
                            "hv_at_40": next((h for n, _, h in points if n == AT_TRIALS), None),
                            "curve": points,
                            "seconds": time.perf_counter() - start,
                        }
                        if weights == "simplex":
                            mean, se, trial = chosen_on_test(path, factory)
                            row.update(test_mean=mean, test_se=se, chosen=trial)
                        results.append(row)
                        report_row(row, results)
        summarize(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def to_target(row: dict[str, Any], results: list[dict[str, Any]]) -> int | None:
    """Examples ``row``'s run scored until its hypervolume reached 95 % of the final value of
    the full-evaluation run with the same sampler, seed and weights."""
    full = next(
        r
        for r in results
        if r["scoring"] == "full"
        and (r["sampler"], r["seed"], r["weights"]) == (row["sampler"], row["seed"], row["weights"])
    )
    return next((e for _, e, h in row["curve"] if h >= TARGET * full["hv_final"]), None)


def report_row(row: dict[str, Any], results: list[dict[str, Any]]) -> None:
    row["to_target"] = to_target(row, results)
    test = (
        f"; test mean of the choice (trial {row['chosen']}) {row['test_mean']:.4f} "
        f"± {row['test_se']:.4f}"
        if "test_mean" in row
        else ""
    )
    hv40 = f"{row['hv_at_40']:.4f}" if row["hv_at_40"] is not None else "-"
    print(
        f"{row['sampler']:5} seed {row['seed']} {row['weights']:11} {row['scoring']:6}: "
        f"{row['trials']} trials ({row['stopped']} stopped), {row['examples']} examples; "
        f"hypervolume at {AT_TRIALS} trials {hv40}, final {row['hv_final']:.4f}; examples to "
        f"{TARGET:.0%} of full's final {row['to_target']}{test}  [{row['seconds']:.0f} s]",
        flush=True,
    )


def select(results: list[dict[str, Any]], sampler: str, weights: str, scoring: str) -> list:
    """The runs of one sampler, weights and scoring, in seed order."""
    want = (sampler, weights, scoring)
    return [r for r in results if (r["sampler"], r["weights"], r["scoring"]) == want]


def summarize(results: list[dict[str, Any]]) -> None:
    print("\nratios (mean over seeds, min..max):")
    for sampler in dict.fromkeys(r["sampler"] for r in results):
        for weights in ("simplex", "independent"):
            full = select(results, sampler, weights, "full")
            staged = select(results, sampler, weights, "staged")
            speed = [
                f["to_target"] / s["to_target"]
                for f, s in zip(full, staged, strict=True)
                if f["to_target"] and s["to_target"]
            ]
            hv = [s["hv_final"] / f["hv_final"] for f, s in zip(full, staged, strict=True)]
            print(
                f"  {sampler} {weights}: full/staged examples to {TARGET:.0%} HV "
                f"{_stats(speed)} ({len(speed)}/{len(full)} staged runs reached it); "
                f"staged/full final HV {_stats(hv)}"
            )
            if weights == "simplex":
                for scoring, rows in (("full", full), ("staged", staged)):
                    means = ", ".join(f"{r['test_mean']:.4f} ± {r['test_se']:.4f}" for r in rows)
                    print(f"    test-split mean of the choice, {scoring}: {means}")
        simplex = select(results, sampler, "simplex", "full")
        indep = select(results, sampler, "independent", "full")
        at40 = [
            s["hv_at_40"] / i["hv_at_40"]
            for s, i in zip(simplex, indep, strict=True)
            if s["hv_at_40"] and i["hv_at_40"]
        ]
        print(
            f"  {sampler}: simplex/independent HV at {AT_TRIALS} trials (full scoring) "
            f"{_stats(at40)}"
        )


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.fmean(values):.2f}x ({min(values):.2f}..{max(values):.2f})"


if __name__ == "__main__":
    sys.exit(main())
