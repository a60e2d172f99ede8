"""Estimated scoring (``eval.estimate``) as a strategy of the study loop.

:class:`EstimatedScoring` checks the ``eval.estimate`` section (:class:`EstimateConfig`), makes
each search worker's evaluator prove it can score subsets of examples and that its tasks are
large enough for the design, scores trials through an
:class:`~search.strategies.estimate.scorer.EstimateScorer`, and gives the samplers the
constraint of trials stopped once the front beats them. What a trial records is
:class:`EstimateFields`, under the strategy's name in ``TrialRecord.strategies``.

It replaces staged scoring rather than composing with it: both decide how many examples a trial
scores, and the study loop takes one scorer (``search.study.strategy.build_strategies`` refuses
two in one line).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search.study.strategy import SubsetScoring, parse_settings

if TYPE_CHECKING:
    import optuna

    from search.strategies.estimate.scorer import EstimateScorer
    from search.study.record import TrialRecord
    from search.study.worker import Runtime

SECTION = "eval.estimate"
MIN_SHARE = 2  # a task needs at least MIN_SHARE·n search examples (see EstimateConfig.n)


class EstimateConfig(BaseModel):
    """``eval.estimate``: score ``n`` examples per task, estimate the rest, score more only
    while the trial's place on the front is in doubt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # examples per task at a trial's first look (of the study's shared order). A task needs at
    # least 2n search examples: the first look must leave half of them to estimate, else the
    # looks that follow cost about what a full evaluation does
    n: int = Field(default=20, ge=2)
    # examples per task drawn at random per trial beyond the shared part (0: paired only)
    audit: int = Field(default=0, ge=0)
    # the rows the prediction model fits on. full: the inputs and trials scored in full (the
    # estimate is unbiased over the draw of the study's order). scored: every value any earlier
    # trial scored (partial rows too); needs audit > 0: the trial's shared examples then count
    # exactly (a census) and the audit part alone corrects the predictions of the rest, unbiased
    # over the trial's own audit draw whatever the model learnt from the shared examples
    fit: Literal["full", "scored"] = "full"
    # the per-example prediction model (search.strategies.estimate.predict.MODELS); kernel
    # measured best on the demo pool (bench/README.md)
    model: str = "kernel"
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)  # of "a front member beats it"
    growth: float = Field(default=2.0, gt=1.0)  # each further look scores at least this × more
    # the most of each task's examples a sampler trial scores (at least n). 1.0: until its place
    # on the front is decided (front members end scored in full). Below 1, a trial still in
    # doubt at the cap keeps its estimates and may stand on the front as an estimate (the
    # choice re-scores the front on the held-out split, exactly)
    max_share: float = Field(default=1.0, gt=0.0, le=1.0)
    # the moderated variance's prior weight in residuals (0/1 values: a few residuals are often
    # all 0); 5 covered 94–98 % at n = 10..40 on the demo pool
    prior_df: float = Field(default=5.0, ge=0.0)
    # with max_share < 1: a sampler trial that reaches the cap and may be on the front (no member,
    # all scored in full, beats its estimates on every objective) scores every example, while the
    # sampler's trials have spent on average at most a capped trial's examples (shared part and
    # audit) and promote of a full evaluation more (0: none is promoted). Promoted trials are
    # exact: front members to decide against and rows to fit on
    promote: float = Field(default=0.0, ge=0.0, le=1.0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from search.strategies.estimate.predict import MODELS

        if value not in MODELS:
            raise ValueError(f"expected one of {', '.join(sorted(MODELS))} (got {value!r})")
        return value

    @model_validator(mode="after")
    def _scored_needs_audit(self) -> EstimateConfig:
        if self.fit == "scored" and self.audit == 0:
            raise ValueError(
                "fit: scored fits on the shared examples' values, so only a random audit part "
                "can correct the estimate without bias: set audit > 0 or fit: full"
            )
        return self


@dataclass(frozen=True)
class EstimateFields:
    """What estimated scoring records on a trial.

    Attributes:
        n: examples it scored (every task, every look); total: a full evaluation's.
        looks: how many times it scored examples.
        seed: the design's seed (the study's evaluation seed): with ``counts`` and ``audit``
            it gives the examples scored (:meth:`~search.strategies.estimate.design.Design.
            sample`).
        counts: per leaf task, the examples of the shared order scored.
        audit: per leaf task, the examples drawn at random beyond them.
        model: the prediction model.
        estimates / ses: per objective, the estimate told to Optuna and its standard error
            (the exact value and 0 for a trial scored in full).
        values: per score key, the values scored, packed (``search.study.record``), in
            ascending position of a full evaluation's values; empty for a trial scored in full
            (its values are ``TrialRecord.examples``).
        violation: its constraint: 0 scored in full or capped, > 0 stopped (the share not
            scored).
        stopped_by: the front member that beat it (``None``: scored in full, or stopped at
            ``max_share`` with its place in doubt: its values are estimates).
    """

    n: int
    total: int
    looks: int = 1
    seed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    audit: int = 0
    model: str = ""
    estimates: dict[str, float] = field(default_factory=dict)
    ses: dict[str, float | None] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    violation: float = 0.0
    stopped_by: int | None = None

    @classmethod
    def of(cls, record: TrialRecord, name: str) -> EstimateFields | None:
        fields = record.strategies.get(name)
        return cls(**fields) if fields else None

    @property
    def full(self) -> bool:
        """Scored every example (its values are exact)."""
        return self.n >= self.total

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["ses"] = {k: (None if v is None or math.isnan(v) else v) for k, v in self.ses.items()}
        return out


class EstimatedScoring(SubsetScoring):
    """The estimated-scoring strategy (see the module docstring)."""

    name = "estimate"
    section_path = SECTION
    what = "estimated scoring"
    fields = EstimateFields

    def check(self) -> None:
        section = {} if self.section is True else self.section
        self.settings = parse_settings(EstimateConfig, section, SECTION)
        self.refuse_ratios("not a mean of per-example values to estimate")
        if "singles" not in self.cfg.seed_kinds:
            raise ValueError(
                f"{SECTION}: fits its predictions on every input's full per-example scores: "
                f"add singles to seed_trials (now {list(self.cfg.seed_kinds)})"
            )
        limit = self.cfg.eval.limit
        if limit is not None and limit < MIN_SHARE * self.first:
            raise ValueError(
                f"{SECTION}.n: {self.first} examples per task at the first look{self._audit} need "
                f"tasks of at least {MIN_SHARE * self.first} search examples (half left to "
                f"estimate); eval.limit: {limit} caps them: lower n or raise eval.limit"
            )

    @property
    def first(self) -> int:
        """Examples per task at a trial's first look (shared and audit parts)."""
        return self.settings.n + self.settings.audit

    @property
    def _audit(self) -> str:
        return " (n + audit)" if self.settings.audit else ""

    def prepare_runtime(self, runtime: Runtime) -> None:
        if runtime.split != "search":
            return  # held-out and test re-scores are exact full evaluations
        self.layout(runtime)
        small = {
            task: n
            for task, n in runtime.evaluator.examples_per_task().items()
            if n < MIN_SHARE * self.first
        }
        if small:
            from search.errors import UserError

            task, n = next(iter(small.items()))
            raise UserError(
                f"{SECTION}.n: {self.first} examples per task at the first look{self._audit} need "
                f"tasks of at least {MIN_SHARE * self.first} search examples (half left to "
                f"estimate); {task} has {n}: lower n or set {SECTION}: null"
            )

    def scorer(self, runtime: Runtime, study: optuna.Study) -> EstimateScorer:
        from search.strategies.estimate.scorer import EstimateScorer

        return EstimateScorer(self.cfg, self.settings, runtime, study, self.name)

    def summary(self, records: Sequence[TrialRecord]) -> str:
        fields = [f for r in records if (f := EstimateFields.of(r, self.name)) is not None]
        estimated = sum(not f.full for f in fields)
        return (
            f"{estimated} estimated from part of their examples "
            f"({sum(r.stopped for r in records)} stopped by the front)"
        )
