"""A worker stopped in the middle of claiming a trial leaves nothing stuck (real SQLite storage)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.study.config import WorkersConfig
from search.study.storage import Budget, claim_trial, connect


class StopOnce(optuna.samplers.RandomSampler):
    """A sampler whose first ``before_trial`` is interrupted, as SIGTERM -> SystemExit would."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.stopped = False

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not self.stopped:
            self.stopped = True
            raise SystemExit(143)
        super().before_trial(study, trial)


def test_a_claim_interrupted_inside_ask_is_failed_and_queued_again(tmp_path) -> None:
    storage = connect(
        f"sqlite:///{tmp_path / 'claim.db'}", WorkersConfig(heartbeat_s=1), create=True
    )
    study = optuna.create_study(study_name="claim", storage=storage, sampler=StopOnce())
    study.enqueue_trial({"x": 0.25})
    with pytest.raises(SystemExit):
        claim_trial(study, storage, Budget(n_trials=5))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.FAIL, TrialState.WAITING]  # nothing left running, no heartbeat
    trial = claim_trial(study, storage, Budget(n_trials=5))
    assert trial is not None and trial.suggest_float("x", 0, 1) == 0.25  # the same parameters
