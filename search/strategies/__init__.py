"""The registry of strategies: the one module outside a strategy's folder that names it.

A strategy changes one step of the study loop for the studies whose config asks for it; each
lives in its own folder here and holds its math, its data and caches, its typed config section
and its hooks (:class:`search.study.strategy.Strategy`):

- ``staged`` — staged scoring: a trial is scored in rungs and stopped once the front beats it;
- ``frank_wolfe`` — gradient-informed proposals enqueued as seed trials (the ``fw`` sampler);
- ``fisher`` — each checkpoint's diagonal Fisher, cached on disk, and the Fisher merge method;
- ``regmean`` — each linear layer's Gram matrices, cached on disk, and the RegMean merge method;
- ``estimate`` — estimated scoring: a trial scores a few examples, its scores are estimated
  from a model of the pool with an honest SE, and it scores more only while its place on the
  front is in doubt.

:data:`STRATEGIES` is a plain dict: a name, where its config section lives (a dotted path, read
from the raw config without importing the strategy), the class as a ``"module:Class"`` string,
imported only when a config turns it on, and the merge methods it provides (name ->
``"module:ATTRIBUTE"``). A strategy that provides methods is on when its section is given or
the study merges with one of them; others say when with ``wanted``. :data:`METHODS` gathers the
entries' methods; :func:`merge_methods` and :func:`get_method` are the method lookup of
everything outside the engine (the engine's built-in methods plus these). Samplers a strategy
provides are listed in :data:`SAMPLERS`. A new strategy lands as one folder plus one entry here.

Dependencies: this module imports nothing of the project at import time;
:mod:`search.engine` when a method is looked up. Its folders import :mod:`search.study`,
:mod:`search.engine`, :mod:`search.calibration`, :mod:`evaluators`, never each other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.engine.registry import MergeMethod
    from search.study.config import StudyConfig
    from search.study.strategy import Strategy


@dataclass(frozen=True)
class StrategyEntry:
    """One registered strategy.

    Attributes:
        section: its config section, a dotted path (``eval.staged``): the study config keeps the
            raw value for the strategy to validate (:meth:`Strategy.check`).
        target: ``"module:Class"`` of its :class:`~search.study.strategy.Strategy`.
        methods: the merge methods it provides, name -> ``"module:ATTRIBUTE"`` (a
            :class:`~search.engine.registry.MergeMethod`); a study that merges with one of them
            turns it on.
        wanted: ``(config, raw section or None) -> on``, read from the config alone; ``None``:
            on when its section is given or the study's merge method is one of ``methods``.
        deprecated: older paths of the section, still read (one warning line each).
        attrs: old trial user attrs -> the field of the strategy's record they became (studies
            written before the strategy kept its fields under one attr).
    """

    section: str
    target: str
    methods: Mapping[str, str] = field(default_factory=dict)
    wanted: Callable[[StudyConfig, Any], bool] | None = None
    deprecated: tuple[str, ...] = ()
    attrs: Mapping[str, str] = field(default_factory=dict)

    def load(self) -> type[Strategy]:
        return _load(self.target)

    def on(self, cfg: StudyConfig, section: Any) -> bool:
        """Whether ``cfg``, with this strategy's raw ``section`` (``None``: absent), turns it on."""
        if self.wanted is not None:
            return self.wanted(cfg, section)
        return section is not None or cfg.merge.method in self.methods


STRATEGIES: dict[str, StrategyEntry] = {
    "staged": StrategyEntry(
        "eval.staged",
        "search.strategies.staged:StagedScoring",
        wanted=lambda cfg, section: section is not None and section is not False,
        deprecated=("eval.racing",),
        attrs={
            "rung": "rung",
            "rungs": "rungs",
            "racing_violation": "violation",
            "stopped_by": "stopped_by",
        },
    ),
    "fisher": StrategyEntry(
        "merge.fisher",
        "search.strategies.fisher:FisherCalibration",
        methods={"fisher": "search.strategies.fisher.method:FISHER"},
    ),
    "regmean": StrategyEntry(
        "merge.regmean",
        "search.strategies.regmean:RegMeanCalibration",
        methods={"regmean": "search.strategies.regmean.method:REGMEAN"},
    ),
    "estimate": StrategyEntry(
        "eval.estimate",
        "search.strategies.estimate.strategy:EstimatedScoring",
        wanted=lambda cfg, section: section is not None and section is not False,
    ),
    "frank_wolfe": StrategyEntry(
        "fw",
        "search.strategies.frank_wolfe:FrankWolfe",
        wanted=lambda cfg, section: (
            bool(section) or "fw" in cfg.seed_trials or cfg.sampler.name == "fw"
        ),
    ),
}

# the merge methods strategies provide: name -> "module:ATTRIBUTE" (a MergeMethod)
METHODS: dict[str, str] = {
    name: target for entry in STRATEGIES.values() for name, target in entry.methods.items()
}

# samplers a strategy provides: name -> "module:Class" (an optuna.samplers.BaseSampler)
SAMPLERS: dict[str, str] = {
    "fw": "search.strategies.frank_wolfe.sampler:FrankWolfeSampler",
}


def merge_methods() -> dict[str, MergeMethod]:
    """Every merge method by name: the engine's built-ins, then those strategies provide."""
    from search.engine.registry import METHODS as BUILT_IN

    return {**BUILT_IN, **{name: _load(target) for name, target in METHODS.items()}}


def method_names() -> list[str]:
    """Every merge method's name (nothing imported but the engine's registry)."""
    from search.engine.registry import METHODS as BUILT_IN

    return [*BUILT_IN, *METHODS]


def get_method(name: str) -> MergeMethod:
    """The merge method ``name``; ``UserError`` listing the supported names otherwise."""
    from search.engine.registry import METHODS as BUILT_IN
    from search.errors import UserError

    if name in BUILT_IN:
        return BUILT_IN[name]
    if name in METHODS:
        return _load(METHODS[name])
    known = ", ".join([*BUILT_IN, *METHODS])
    raise UserError(f"unknown merge method {name!r}; supported: {known}")


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
