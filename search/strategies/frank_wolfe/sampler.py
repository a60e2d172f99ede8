"""``sampler: {name: fw}``: a study whose trials are the Frank-Wolfe endpoints only."""

from __future__ import annotations

from typing import Any

import optuna

from search.errors import UserError


class FrankWolfeSampler(optuna.samplers.BaseSampler):
    """``sampler: {name: fw}``: the study's trials are the Frank-Wolfe endpoints, nothing else.

    Written here because Optuna has no sampler that uses gradients, and none could compute these
    inside ``study.ask``: the paths need the pool, the model and backward passes. They are
    computed before the study is created (:func:`propose`) and enqueued; a trial popped from
    the queue takes its fixed parameters without asking the sampler, and the config caps the
    budget at the number of paths, so this sampler is asked for nothing.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed  # accepted like every sampler's; the paths are deterministic

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return {}

    def sample_relative(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        search_space: dict[str, optuna.distributions.BaseDistribution],
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        raise UserError(
            f"sampler fw: trial {trial.number} is not a Frank-Wolfe endpoint; the fw sampler "
            "runs only the endpoints enqueued when the study was created"
        )
