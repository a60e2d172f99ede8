"""Optuna samplers by name: a plain registry of what each one can do and how it is built.

A study config names a sampler (``sampler.name``) and passes keyword options
(``sampler.options``) straight to its Optuna class; ``seed`` is set from ``sampler.seed`` and,
where the sampler handles constraints, ``constraints_func`` reads the values each trial
stores in its ``constraints`` user attr (Optuna's convention: <= 0 is feasible).

Every entry is an Optuna sampler class except ``fw``: Optuna has no sampler that uses gradients,
and the Frank-Wolfe paths need the model, the pool and a backward pass, which a sampler called
inside ``study.ask`` has none of. So the paths are computed once before the study is created
(a strategy, :mod:`search.strategies`, which provides the ``fw`` sampler) and their endpoints
enqueued; the ``fw`` sampler proposes nothing else, and the study's budget is the number of
paths.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from search.errors import UserError
from search.strategies import SAMPLERS as STRATEGY_SAMPLERS
from search.study.record import TrialRecord
from search.study.strategy import offered

if TYPE_CHECKING:
    import optuna

    from search.study.config import SamplerConfig
    from search.study.strategy import Strategy

FW_SAMPLER = "fw"  # the registry name of the Frank-Wolfe "sampler" (enqueued endpoints only)


@dataclass(frozen=True)
class SamplerEntry:
    """One registered sampler.

    Attributes:
        name: registry name used in configs.
        optuna_class: class name in ``module`` (an ``optuna.samplers.BaseSampler``).
        multi_objective: handles several objectives (else refused when a study has several).
        constraints: accepts ``constraints_func`` (else refused when the config has constraints).
        shared_seed: every worker uses the same seed (the sampler coordinates through the
            storage, e.g. QMC's shared sequence); otherwise each worker gets its own seed so
            parallel workers do not propose the same points.
        defaults: options set unless the config gives them (with a reason in a comment).
        seed_kinds: a sampler that proposes nothing but these kinds of seed trials.
        doc: one line for the README.
        module: where the class lives (Optuna's samplers, or ours).
    """

    name: str
    optuna_class: str
    multi_objective: bool
    constraints: bool
    shared_seed: bool = False
    defaults: Mapping[str, Any] | None = None
    seed_kinds: tuple[str, ...] = ()  # proposes only the seed trials of these kinds
    doc: str = ""
    module: str = "optuna.samplers"

    def optuna_type(self) -> type:

        return getattr(importlib.import_module(self.module), self.optuna_class)

    def option_names(self) -> list[str]:
        params = inspect.signature(self.optuna_type()).parameters
        return [n for n in params if n not in _RESERVED]


_RESERVED = ("seed", "constraints_func")

SAMPLERS: dict[str, SamplerEntry] = {
    "tpe": SamplerEntry(
        "tpe",
        "TPESampler",
        multi_objective=True,
        constraints=True,
        doc="Tree-structured Parzen estimator; one or several objectives; a good default.",
    ),
    "nsga2": SamplerEntry(
        "nsga2",
        "NSGAIISampler",
        multi_objective=True,
        constraints=True,
        doc="NSGA-II genetic algorithm for Pareto fronts; options.population_size ~ budget/5.",
    ),
    "nsga3": SamplerEntry(
        "nsga3",
        "NSGAIIISampler",
        multi_objective=True,
        constraints=True,
        doc="NSGA-III, for three or more objectives.",
    ),
    "gp": SamplerEntry(
        "gp",
        "GPSampler",
        multi_objective=True,
        constraints=True,
        # scores are deterministic for fixed weights (greedy decoding, fixed seeds)
        defaults={"deterministic_objective": True},
        doc="Gaussian-process Bayesian optimization; sample-efficient for small budgets.",
    ),
    "cmaes": SamplerEntry(
        "cmaes",
        "CmaEsSampler",
        multi_objective=False,
        constraints=False,
        doc="CMA-ES (as in Khalifa et al.); one objective only.",
    ),
    "random": SamplerEntry(
        "random",
        "RandomSampler",
        multi_objective=True,
        constraints=False,
        doc="Uniform random search; a baseline.",
    ),
    "qmc": SamplerEntry(
        "qmc",
        "QMCSampler",
        multi_objective=True,
        constraints=False,
        shared_seed=True,
        doc="Quasi-Monte Carlo (Sobol) space filling; a baseline.",
    ),
    FW_SAMPLER: SamplerEntry(
        FW_SAMPLER,
        STRATEGY_SAMPLERS[FW_SAMPLER].partition(":")[2],
        multi_objective=True,
        constraints=False,
        module=STRATEGY_SAMPLERS[FW_SAMPLER].partition(":")[0],
        seed_kinds=("fw",),
        doc="Only the Frank-Wolfe paths' endpoints (one trial per path; linear merges).",
    ),
}


def constraints_func(
    constrained: bool, strategies: Sequence[Strategy]
) -> Callable[[optuna.trial.FrozenTrial], Sequence[float]] | None:
    """What the samplers' ``constraints_func`` reads: the config's bound values each trial
    recorded (:attr:`TrialRecord.constraints`), then those the strategies add (a stopped
    trial's); ``None`` when there are none."""
    adders = offered(strategies, "constraints")
    if not constrained and not adders:
        return None

    def values(trial: optuna.trial.FrozenTrial) -> Sequence[float]:
        record = TrialRecord.from_trial(trial)
        return (*record.constraints, *(c for add in adders for c in add(record)))

    return values


def check_sampler(cfg: SamplerConfig, *, n_objectives: int, constrained: bool) -> None:
    """Raise ``ValueError("sampler.<field>: ...")`` when the sampler cannot run this study."""
    entry = SAMPLERS.get(cfg.name)
    if entry is None:
        raise ValueError(
            f"sampler.name: unknown sampler {cfg.name!r}; expected one of: {', '.join(SAMPLERS)}"
        )
    if n_objectives > 1 and not entry.multi_objective:
        multi = ", ".join(n for n, e in SAMPLERS.items() if e.multi_objective)
        raise ValueError(
            f"sampler.name: {cfg.name} optimizes one objective but the config has {n_objectives}; "
            f"use one of: {multi}, or keep one objective"
        )
    if constrained and not entry.constraints:
        able = ", ".join(n for n, e in SAMPLERS.items() if e.constraints)
        raise ValueError(
            f"sampler.name: {cfg.name} ignores constraints; "
            f"use one of: {able}, or remove constraints"
        )
    known = entry.option_names()
    for option in cfg.options:
        if option in _RESERVED:
            raise ValueError(
                f"sampler.options.{option}: set by merge-search (use sampler.seed / constraints)"
            )
        if option not in known:
            raise ValueError(
                f"sampler.options.{option}: unknown option for {cfg.name}; "
                f"expected one of: {', '.join(known) or 'none (it takes no options)'}"
            )


def check_options(cfg: SamplerConfig, *, constrained: bool, where: str | Path) -> None:
    """Build the sampler once so Optuna checks the option values; ``UserError`` if it refuses.

    Config validation checks the names only (it builds no sampler); ``launch`` and ``worker``
    call this before anything else, so a bad value is still one line before any work.
    """
    try:
        build_sampler(cfg, constraints=(lambda trial: ()) if constrained else None)
    except ImportError as exc:
        raise UserError(
            f"{where}: sampler.name: {cfg.name} needs the {exc.name or 'missing'} package: "
            f"pip install {exc.name or ''}".rstrip()
        ) from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: sampler.options: {cfg.name} refused them: {exc}") from None


def build_sampler(
    cfg: SamplerConfig,
    *,
    constraints: Callable[[optuna.trial.FrozenTrial], Sequence[float]] | None = None,
    worker: int = 0,
    salt: int = 0,
    nonce: int = 0,
) -> optuna.samplers.BaseSampler:
    """The configured Optuna sampler.

    Args:
        cfg: the config's sampler section.
        constraints: the study's constraints function (:func:`constraints_func`), wired as
            ``constraints_func`` where the sampler takes one.
        worker: index of the worker; with ``salt`` it varies the seed so that parallel workers
            and resumed runs do not replay the same random stream (unless ``shared_seed``).
        salt: e.g. the number of trials already in the study.
        nonce: what sets this worker apart from every other worker of every launch (its host,
            its process and its launch, :func:`search.study.processes.worker_nonce`); ``0`` only
            for the launch that created the study, whose workers keep the seeds they always
            had (a one-worker study is reproducible).
    """
    entry = SAMPLERS[cfg.name]
    kwargs: dict[str, Any] = {**(entry.defaults or {}), **cfg.options}
    kwargs["seed"] = _seed(cfg.seed, worker, salt, entry.shared_seed, nonce)
    if constraints is not None and entry.constraints:
        kwargs["constraints_func"] = constraints
    with warnings.catch_warnings():
        # constraints_func is deprecated in Optuna 5 in favour of Trial.set_constraint, but
        # optuna-dashboard 0.21 shows feasibility only from the list it writes.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*experimental.*")
        return entry.optuna_type()(**kwargs)


def _seed(seed: int | None, worker: int, salt: int, shared: bool, nonce: int = 0) -> int | None:
    if seed is None or shared or (worker == 0 and salt == 0 and nonce == 0):
        return seed
    entropy = [seed, worker, salt] + ([nonce] if nonce else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
