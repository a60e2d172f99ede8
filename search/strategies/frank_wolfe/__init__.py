"""Frank-Wolfe proposals (``seed_trials: [..., fw]`` or ``sampler: {name: fw}``).

A strategy of the study loop (:mod:`search.study.strategy`): :class:`FrankWolfe` checks the
``fw`` section against the merge method, runs the paths once before the workers start
(:mod:`.paths`), enqueues their endpoints as seed trials of kind ``fw`` and keeps what the paths
did in the study's ``fw`` user attr. With the ``fw`` sampler (:mod:`.sampler`) the endpoints are
the study's only trials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from search.study.samplers import FW_SAMPLER
from search.study.strategy import Offers, Strategy, parse_settings

if TYPE_CHECKING:
    from search.strategies.frank_wolfe.paths import Proposals
    from search.study.strategy import Scratch

STUDY_ATTR = "fw"  # the study user attr: the paths and what they cost


class FrankWolfeConfig(BaseModel):
    """The ``fw`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    examples: int = Field(default=64, ge=1)  # proxy examples per task, from the search split
    steps: int = Field(default=10, ge=1)  # Frank-Wolfe iterations per path (FW-Merging: 10)
    # paths, one per preference vector over the objectives' proxy losses (1 with one objective)
    preferences: int = Field(default=5, ge=1)

    def paths(self, n_objectives: int) -> int:
        """Frank-Wolfe paths: one per preference vector, one with a single objective."""
        return self.preferences if n_objectives > 1 else 1


class FrankWolfe(Strategy):
    """The Frank-Wolfe strategy (see the module docstring)."""

    name = "frank_wolfe"

    def check(self) -> None:
        cfg = self.cfg
        self.settings = parse_settings(FrankWolfeConfig, self.section, "fw")
        self.proposals: Proposals | None = None
        # an ``fw`` section alone is checked, but proposes nothing
        self.on = "fw" in cfg.seed_kinds
        if not self.on:
            return
        field = "sampler.name" if cfg.sampler.name == FW_SAMPLER else "seed_trials"
        from search.strategies import get_method, merge_methods

        method = get_method(cfg.merge.method)
        if not method.convex:
            able = ", ".join(m.name for m in merge_methods().values() if m.convex)
            raise ValueError(
                f"{field}: Frank-Wolfe proposals need a merge that is Σ w_i θ_i on the simplex "
                f"(method: {able}); method {method.name!r} is not"
            )
        weights = cfg.merge.weights
        if weights.low > 0:
            raise ValueError(
                f"merge.weights.low: Frank-Wolfe points give checkpoints weight 0; expected "
                f"low <= 0 with {field}: fw (got {weights.low})"
            )
        if not cfg.fixed_params().get("normalize") and weights.high < 1:
            raise ValueError(
                "merge.weights.high: Frank-Wolfe points give a checkpoint weight 1 when the "
                f"weights are not normalized; expected high >= 1 (got {weights.high})"
            )

    def offers(self) -> Offers:
        return Offers(
            trial_cap=self.trial_cap(), seed_trials=self.seed_trials, study_attrs=self.study_attrs
        )

    def trial_cap(self) -> int | None:
        # the fw sampler proposes nothing else: the study's trials are the paths' endpoints
        if self.on and self.cfg.sampler.name == FW_SAMPLER:
            return self.settings.paths(len(self.cfg.objectives))
        return None

    def needs_precompute(self, new_study: bool) -> bool:
        return self.on and new_study  # a resumed study has its endpoints already

    def precompute(self, scratch: Scratch, new_study: bool) -> list[str]:
        from search.strategies.frank_wolfe.paths import propose

        if not self.needs_precompute(new_study):
            return []
        self.proposals = propose(
            self.cfg, self.settings, scratch.space, scratch.pool, scratch.model, scratch.tokenizer
        )
        return [self.proposals.summary()]

    def seed_trials(self) -> Mapping[str, Sequence[tuple[str, dict[str, Any]]]]:
        if not self.on:
            return {}
        if self.proposals is None:
            raise RuntimeError("Frank-Wolfe: seed_trials() before precompute()")
        return {"fw": self.proposals.seeds}

    def study_attrs(self) -> Mapping[str, Any]:
        return {STUDY_ATTR: self.proposals.record} if self.proposals is not None else {}
