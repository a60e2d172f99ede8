"""Staged scoring (``eval.staged``): score a trial in rungs, stop it once the front beats it.

A strategy of the study loop (:mod:`search.study.strategy`): :class:`StagedScoring` checks the
``eval.staged`` section (:class:`StagedConfig`; the old name ``eval.racing`` is still read),
makes each worker's evaluator prove it can combine partial scores, scores trials through a
:class:`~search.strategies.staged.scorer.StagedScorer`, and gives the samplers the constraint of
stopped trials. The statistics are in :mod:`.racing`; what a trial records is
:class:`StagedFields`, under the strategy's name in ``TrialRecord.strategies``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from search.study.strategy import SubsetScoring, parse_settings

if TYPE_CHECKING:
    import optuna

    from search.strategies.staged.scorer import StagedScorer
    from search.study.record import TrialRecord
    from search.study.worker import Runtime

SECTION = "eval.staged"


class StagedConfig(BaseModel):
    """``eval.staged``: rungs of growing example counts, a trial stopped once a front member
    beats it on every objective with confidence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # cumulative fractions of each task's examples scored by the end of each rung; last 1.0
    rungs: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _check_rungs(self) -> StagedConfig:
        r = self.rungs
        growing = all(a < b for a, b in zip(r, r[1:], strict=False))
        if not r or any(not 0 < f <= 1 for f in r) or not growing:
            raise ValueError(
                f"rungs: expected increasing fractions in (0, 1], e.g. [0.125, 0.25, 0.5, 1.0] "
                f"(got {list(r)})"
            )
        if r[-1] != 1.0:
            raise ValueError(
                f"rungs: the last rung scores every example: expected 1.0 (got {r[-1]})"
            )
        return self


@dataclass(frozen=True)
class StagedFields:
    """What staged scoring records on a trial.

    Attributes:
        rung: rungs it scored; rungs: the study's rungs;
        violation: its constraint: 0 scored in full, > 0 stopped (:func:`.racing.violation`);
        stopped_by: the front member that beat it (``None``: scored in full).
    """

    rung: int
    rungs: int
    violation: float = 0.0
    stopped_by: int | None = None

    @classmethod
    def of(cls, record: TrialRecord, name: str) -> StagedFields | None:
        fields = record.strategies.get(name)
        return cls(**fields) if fields else None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class StagedScoring(SubsetScoring):
    """The staged-scoring strategy (see the module docstring)."""

    name = "staged"
    section_path = SECTION
    what = "staged scoring"
    fields = StagedFields

    def check(self) -> None:
        section = {} if self.section is True else self.section
        self.settings = parse_settings(StagedConfig, section, SECTION)
        self.refuse_ratios("not a mean of per-example values; staged scoring needs mean metrics")

    def prepare_runtime(self, runtime: Runtime) -> None:
        if runtime.split == "search":
            self.layout(runtime)  # UserError when the scores of subsets cannot be combined

    def scorer(self, runtime: Runtime, study: optuna.Study) -> StagedScorer:
        from search.strategies.staged.scorer import StagedScorer

        return StagedScorer(self.cfg, self.settings, runtime, study, self.name)

    def summary(self, records: Sequence[TrialRecord]) -> str:
        return f"{sum(r.stopped for r in records)} stopped early by staged scoring"
