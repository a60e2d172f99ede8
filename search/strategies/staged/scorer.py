"""Staged scoring of one worker's trials: rung by rung, stopped once the front beats them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from evaluators.stats import Objective, Term
from search.strategies.staged import StagedFields, StagedScoring, racing
from search.study.record import TrialRecord

if TYPE_CHECKING:
    import numpy as np

    from search.strategies.staged import StagedConfig
    from search.study.config import StudyConfig
    from search.study.worker import Runtime


class StagedScorer:
    """Staged scoring of one worker's trials (``eval.staged``; the test: :mod:`.racing`).

    The merged model is scored rung by rung on the documents :func:`.racing.plan_rungs`
    gives (the same on every worker). After each rung but the last: with several objectives
    the trial is compared, paired on its examples, with the study's current front (complete,
    not stopped, feasible trials: their stored per-example values); with one objective
    Optuna's ``WilcoxonPruner`` decides (``trial.report`` of every example's value, step = the
    example's position, then ``should_prune``), at level ``(1 − confidence) / (rungs − 1)``.
    A trial that passes every rung gets the scores a full evaluation gives
    (``Evaluator.combine``).
    """

    def __init__(
        self,
        cfg: StudyConfig,
        settings: StagedConfig,
        runtime: Runtime,
        study: optuna.Study,
        name: str,
    ) -> None:
        self.cfg, self.settings, self.runtime, self.study = cfg, settings, runtime, study
        self.name = name  # the strategy's name: its fields' key in TrialRecord.strategies
        self.layout = StagedScoring.layout(runtime)
        self.counts = runtime.evaluator.examples_per_task()
        self.full = sum(self.counts.values())
        self.rungs = racing.plan_rungs(self.counts, settings.rungs, cfg.eval.seed)
        self.objectives = [
            Objective(
                o.name,
                o.direction == "maximize",
                tuple(Term(k, w) for k, w in self.layout.terms[o.name]),
            )
            for o in cfg.objectives
        ]
        self.single = len(self.objectives) == 1
        # one objective: the steps of its terms do not overlap (term j's after term j − 1's)
        self._offsets: dict[str, int] = {}
        offset = 0
        for term in self.objectives[0].terms if self.single else ():
            self._offsets[term.key] = offset
            offset += sum(self.counts[leaf] for leaf in self.layout.leaves[term.key])
        looks = max(1, len(self.rungs) - 1)
        if self.single:
            study.pruner = optuna.pruners.WilcoxonPruner(
                p_threshold=(1.0 - settings.confidence) / looks,
                n_startup_steps=racing.MIN_EXAMPLES,
            )
        self._decoded: dict[int, dict[str, tuple[float, ...]]] = {}

    def score(self, trial: optuna.Trial) -> TrialRecord:
        """Score the resident merge in rungs; stop when the front (or the best trial) beats it."""
        partial = racing.Partial(self.layout.leaves, self.counts)
        runtime = self.runtime
        stopped_by: int | None = None
        for k, docs in enumerate(self.rungs):
            subset = runtime.evaluator.score_subset(runtime.model, runtime.tokenizer, docs)
            before = {key: len(partial.positions(key)) for key in self.layout.leaves}
            partial.add_subset(subset, docs)
            last = k == len(self.rungs) - 1
            if self.single:
                self._report(trial, partial, before)
                if not last and trial.should_prune():
                    stopped_by = self.study.best_trial.number
            elif not last:
                stopped_by = self._dominated(partial)
            if stopped_by is not None or last:
                break
        if stopped_by is None:
            combined = runtime.evaluator.combine(partial.full())
            fields = StagedFields(rung=k + 1, rungs=len(self.rungs), violation=0.0)
            return TrialRecord.of_scores(
                trial.number, combined, self.cfg.objective_names, strategies=self._own(fields)
            )
        return self._stopped(trial.number, partial, stopped_by, k + 1)

    def _own(self, fields: StagedFields) -> dict[str, dict]:
        return {self.name: fields.to_json()}

    def _report(self, trial: optuna.Trial, partial: racing.Partial, before: dict[str, int]) -> None:
        """One objective: every new example's value as an intermediate value (its own step)."""
        values = partial.values()
        for term in self.objectives[0].terms:
            where = partial.positions(term.key)
            for i in range(before[term.key], len(values[term.key])):
                trial.report(float(values[term.key][i]), self._offsets[term.key] + where[i])

    def _dominated(self, partial: racing.Partial) -> int | None:
        members = self._front(partial)
        if not members:
            return None
        z = racing.z_value(self.settings.confidence, len(members), len(self.rungs) - 1)
        return racing.dominated_with_confidence(self.objectives, partial.values(), members, z)

    def _front(self, partial: racing.Partial) -> dict[int, dict[str, np.ndarray]]:
        """The current front's values at the candidate's examples, by trial number."""
        rows: dict[str, TrialRecord] = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            record = TrialRecord.from_trial(t)
            if record.examples and record.feasible:
                rows.setdefault(record.key, record)
        records = list(rows.values())
        maximize = [o.maximize for o in self.objectives]
        members = {}
        for i in racing.front([r.values for r in records], maximize):
            r = records[i]
            if r.number not in self._decoded:
                self._decoded[r.number] = r.per_example()
            values = partial.at(self._decoded[r.number])
            if values is not None:
                members[r.number] = values
        return members

    def _stopped(self, number: int, partial: racing.Partial, by: int, rung: int) -> TrialRecord:
        """A stopped trial's record: its scores over the examples it scored (the evaluator's own
        reduction, ``Evaluator.combine``), without their per-example values."""
        scores = self.runtime.evaluator.combine(partial.values())
        fields = StagedFields(
            rung=rung,
            rungs=len(self.rungs),
            violation=racing.violation(partial.scored, self.full),
            stopped_by=by,
        )
        scored = TrialRecord.of_scores(
            number, scores, self.cfg.objective_names, strategies=self._own(fields)
        )
        return dataclasses.replace(scored, examples={})

    def spent(self, record: TrialRecord) -> int:
        """Examples a trial scored: every rung it reached."""
        fields = StagedFields.of(record, self.name)
        rung = fields.rung if fields else len(self.rungs)
        return sum(len(d) for docs in self.rungs[:rung] for d in docs.values())
