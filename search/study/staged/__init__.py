"""Staged scoring (``eval.racing``): score a trial in rungs, stop it once the front beats it.

A strategy of the study loop (:mod:`search.study.features`): :class:`StagedScoring` checks the
``eval.racing`` section, makes each worker's evaluator prove it can combine partial scores,
scores trials through a :class:`~search.study.staged.racer.Racer`, and gives the samplers the
racing constraint of stopped trials. The statistics are in :mod:`.racing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from search.study.features import Feature, parse_settings

if TYPE_CHECKING:
    import optuna

    from search.study.record import TrialRecord
    from search.study.staged.racer import Racer
    from search.study.worker import Runtime


class RacingConfig(BaseModel):
    """``eval.racing``: rungs of growing example counts, a trial stopped once a front member
    beats it on every objective with confidence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # cumulative fractions of each task's examples scored by the end of each rung; last 1.0
    rungs: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _check_rungs(self) -> RacingConfig:
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


class StagedScoring(Feature):
    """The staged-scoring strategy (see the module docstring)."""

    name = "staged"
    adds_constraints = True

    def check(self) -> None:
        self.settings = parse_settings(RacingConfig, self.cfg.eval.racing, "eval.racing")
        for i, obj in enumerate(self.cfg.objectives):
            if obj.evaluator == "perplexity":
                raise ValueError(
                    f"eval.racing: objectives[{i}] ({obj.name!r}) scores perplexity, a ratio "
                    "over the whole file, not a mean of per-example values; staged scoring "
                    "needs mean metrics: set eval.racing: null or drop that objective"
                )

    def prepare_runtime(self, runtime: Runtime) -> None:
        if runtime.split == "search":
            runtime.evaluator.layout()  # UserError when staged scoring cannot combine its scores

    def scorer(self, runtime: Runtime, study: optuna.Study) -> Racer:
        from search.study.staged.racer import Racer

        return Racer(self.cfg, self.settings, runtime, study)

    def constraints(self, record: TrialRecord) -> tuple[float, ...]:
        # > 0: stopped; 0 for a trial scored in full, or scored before racing was turned on
        return (float(record.racing_violation or 0.0),)

    def summary(self, records: Sequence[TrialRecord]) -> str:
        return f"{sum(r.stopped for r in records)} stopped early by staged scoring"
