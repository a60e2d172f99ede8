"""Strategies the study loop can switch on, behind one small hook interface.

The study loop (:mod:`~search.study.launch`, :mod:`~search.study.worker`) is a service: it
proposes, merges, scores and tells. A strategy changes one of those steps for the studies whose
config asks for it: staged scoring (:mod:`search.study.staged`) scores a trial in rungs and stops
it early, Frank-Wolfe (:mod:`search.study.frank_wolfe`) enqueues gradient-informed proposals,
the Fisher cache (:mod:`search.study.fisher`) computes each checkpoint's Fisher once before the
workers start. Each lives in its own package and owns its config section, its checks and its
hooks; the loop calls the hooks of the strategies a config turns on and never asks which
they are, as Optuna's study calls ``BasePruner.prune`` and its callbacks.

:data:`FEATURES` is a plain registry: a name, where its config section lives (read without
importing the strategy) and the class, imported only when a config turns it on, so a study
without staged scoring never imports it.

Rules a :class:`Feature` keeps (every hook has a do-nothing default):

- :meth:`Feature.check` raises ``ValueError("field.path: what is expected")`` (the config's
  one-line error) and runs once, when the config is validated; settings are read there.
- :meth:`Feature.signature` joins the study's resume signature: a change refuses a resume.
- :meth:`Feature.precompute` runs in the launcher, before any worker starts, once per launch
  (given a scratch pool and model); it returns the lines to show.
- :meth:`Feature.seed_trials` returns the known points it enqueues by seed-trial kind, and
  :meth:`Feature.study_attrs` what the study keeps of them; both only for a new study.
- :meth:`Feature.prepare_runtime` runs in each worker after its model is built, and
  :meth:`Feature.prepare_export` before an export materializes a study's merge.
- :meth:`Feature.scorer` may take over scoring the resident merge (at most one feature does).
- :meth:`Feature.constraints` adds constraint values the samplers see (Optuna's convention).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import optuna

    from search.engine.pool import CheckpointPool
    from search.study.config import StudyConfig
    from search.study.record import TrialRecord
    from search.study.space import SearchSpace
    from search.study.worker import Runtime


_M = TypeVar("_M")


class Scorer(Protocol):
    """Scores the merge resident in a worker's model for one trial (see :meth:`Feature.scorer`)."""

    def score(self, trial: optuna.Trial) -> TrialRecord:
        """The trial's score fields (:data:`~search.study.record.SCORE_FIELDS`)."""

    def spent(self, record: TrialRecord) -> int:
        """Examples the trial scored."""


@dataclass
class Scratch:
    """What :meth:`Feature.precompute` gets: a pool with its tensors loaded, a model, the space."""

    pool: CheckpointPool
    model: Any
    tokenizer: Any
    space: SearchSpace


class Feature:
    """A strategy plugged into the study loop; see the module docstring for the rules."""

    name: str = ""
    adds_constraints: bool = False  # whether :meth:`constraints` adds values

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg

    def check(self) -> None:
        """Validate this strategy's settings against the config (``ValueError`` naming a field)."""

    def files(self) -> list[tuple[str, Path]]:
        """Files its settings name, ``(field, path)``: they must exist before a study starts."""
        return []

    def protected(self) -> list[tuple[str, Path]]:
        """What it keeps on disk, ``(what, path)``: an export must never replace it."""
        return []

    def trial_cap(self) -> int | None:
        """The most trials a study can run with this strategy on (``None``: no cap)."""
        return None

    def signature(self) -> Mapping[str, Any]:
        """Entries of the search space's signature: a resumed study must keep them."""
        return {}

    def needs_precompute(self, new_study: bool) -> bool:
        """Whether :meth:`precompute` has work for this launch."""
        return False

    def precompute(self, scratch: Scratch, new_study: bool) -> list[str]:
        """Work done once before the workers start; the lines to show."""
        return []

    def seed_trials(self) -> Mapping[str, Sequence[tuple[str, dict[str, Any]]]]:
        """Known points to enqueue, ``{kind: [(label, params), ...]}`` (after precompute)."""
        return {}

    def study_attrs(self) -> Mapping[str, Any]:
        """Study user attrs recording what :meth:`precompute` did (a new study only)."""
        return {}

    def prepare_runtime(self, runtime: Runtime) -> None:
        """Called in each worker once its model and evaluator are built."""

    def prepare_export(self, pool: CheckpointPool) -> None:
        """Called before a study's merge is materialized outside a worker (an export)."""

    def scorer(self, runtime: Runtime, study: optuna.Study) -> Scorer | None:
        """A scorer that replaces the plain full evaluation, or ``None``."""
        return None

    def constraints(self, record: TrialRecord) -> tuple[float, ...]:
        """Constraint values this strategy adds for the samplers (<= 0 feasible)."""
        return ()

    def summary(self, records: Sequence[TrialRecord]) -> str:
        """A fragment of the launch's summary line (``""``: nothing to say)."""
        return ""


@dataclass(frozen=True)
class FeatureEntry:
    """One registered strategy.

    Attributes:
        wanted: whether a config turns it on, read from the config alone.
        target: ``"module:Class"``, imported only when wanted.
    """

    name: str
    wanted: Callable[[StudyConfig], bool]
    target: str

    def load(self) -> type[Feature]:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


FEATURES: dict[str, FeatureEntry] = {
    "staged": FeatureEntry(
        "staged", lambda cfg: cfg.eval.racing is not None, "search.study.staged:StagedScoring"
    ),
    "fisher": FeatureEntry(
        "fisher", lambda cfg: cfg.merge.fisher is not None, "search.study.fisher:FisherCalibration"
    ),
    "frank_wolfe": FeatureEntry(
        "frank_wolfe",
        lambda cfg: bool(cfg.fw) or "fw" in cfg.seed_trials or cfg.sampler.name == "fw",
        "search.study.frank_wolfe:FrankWolfe",
    ),
}


def build_features(cfg: StudyConfig) -> tuple[Feature, ...]:
    """The strategies ``cfg`` turns on, each checked (``ValueError`` naming the field)."""
    features = tuple(e.load()(cfg) for e in FEATURES.values() if e.wanted(cfg))
    for feature in features:
        feature.check()
    return features


def parse_settings(model: type[_M], value: Any, field: str) -> _M:
    """A strategy's config section validated into its pydantic ``model``; pydantic's errors
    become the config's one-line ``ValueError`` naming ``field`` (e.g. ``eval.racing.rungs``)."""
    from pydantic import ValidationError

    from search.errors import one_line

    try:
        return model.model_validate(value or {})
    except ValidationError as exc:
        line = one_line(exc, model)
        head = line.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
        raise ValueError(f"{field}{'.' if head in model.model_fields else ': '}{line}") from None
