"""How far from the uniform merge do the demo study's trials go? Independent vs simplex weights.

Runs the demo study (``--config``, its pool replaced by ``--zoo``) twice through the study
service, once per ``merge.weights.parametrization`` (``independent``: K weights in [0, 1]
divided by their sum; ``simplex``: ``-log u``, uniform on the simplex for uniform ``u``), with
the same sampler, seed and budget, one worker, in temporary SQLite files. For the sampler's own
trials (seed trials left out) it prints a text histogram of the largest applied coefficient per
trial, its mean, the share of trials leaning more than 0.6 on one checkpoint, and the range each
objective covered; the uniform merge has 1/K, a single checkpoint 1.

Usage (from the repository root)::

    python bench/weight_spread.py [--zoo studies/zoo] [--trials 100] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _study import on_pool, run_study  # noqa: E402

# this bench reads only local pools and tasks: keep the Hugging Face libraries off the hub
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

BINS = [i / 10 for i in range(11)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--zoo", default=str(REPO / "studies" / "zoo"))
    p.add_argument("--trials", type=int, default=None, help="default: the config's budget")
    p.add_argument("--limit", type=int, default=None, help="override eval.limit")
    return p.parse_args(argv)


def config_for(args: argparse.Namespace, folder: Path, parametrization: str) -> Path:
    data = yaml.safe_load(Path(args.config).read_text())
    zoo = Path(args.zoo)
    name = f"spread-{parametrization}"
    weights = {"normalize": True, "parametrization": parametrization}
    data = on_pool(data, zoo)
    data.update(
        name=name,
        storage=f"sqlite:///{folder / name}.db",
        merge={**data["merge"], "weights": weights},
        seed_trials=[],
        budget={**data["budget"], **({"n_trials": args.trials} if args.trials else {})},
    )
    data["eval"] = {**data["eval"], "racing": None}  # every trial scored in full
    if args.limit is not None:
        data["eval"] = {**data["eval"], "limit": args.limit}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(path: Path, runtime: Any) -> list[Any]:
    from optuna.trial import TrialState

    study = run_study(path, runtime)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def histogram(values: list[float]) -> list[str]:
    counts = [0] * (len(BINS) - 1)
    for v in values:
        counts[min(int(v * 10), len(counts) - 1)] += 1
    width = max(counts) or 1
    return [
        f"  {BINS[i]:.1f}-{BINS[i + 1]:.1f} {'#' * round(40 * c / width):<40} {c}"
        for i, c in enumerate(counts)
    ]


def main(argv: list[str] | None = None) -> int:
    import optuna

    from search.study.config import load_config
    from search.study.record import TrialRecord
    from search.study.worker import Runtime

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="weight-spread-") as tmp:
        folder = Path(tmp)
        paths = {p: config_for(args, folder, p) for p in ("independent", "simplex")}
        cfg = load_config(paths["simplex"])
        runtime = Runtime.create(cfg)
        k = len(runtime.pool.names)
        print(
            f"demo study, {k} checkpoints, sampler {cfg.sampler.name} (seed {cfg.sampler.seed}), "
            f"{cfg.budget.n_trials} trials each, no seed trials; uniform merge: max coefficient "
            f"{1 / k:.2f}"
        )
        for parametrization, path in paths.items():
            done = run(path, runtime)
            records = [TrialRecord.from_trial(t) for t in done]
            top = [max(c[0] for c in r.coefficients.values()) for r in records]
            print(f"\n{parametrization}: largest coefficient per trial ({len(top)} trials)")
            print("\n".join(histogram(top)))
            lean = sum(v > 0.6 for v in top) / len(top)
            print(
                f"  mean {statistics.fmean(top):.3f}, median {statistics.median(top):.3f}, "
                f"> 0.6 in {lean:.0%} of trials"
            )
            for i, name in enumerate(cfg.objective_names):
                vals = [t.values[i] for t in done]
                print(f"  {name}: {min(vals):.3f} .. {max(vals):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
