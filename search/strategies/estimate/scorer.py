"""Estimated scoring of one worker's trials: a few examples, an honest estimate, more if in doubt.

For each trial (:meth:`EstimateScorer.score`):

1. Seed trials (the inputs alone, the uniform merge, ...) and every trial scored before the
   inputs' full values are in the study are scored in full, as a plain evaluation: the model
   fits on them.
2. Otherwise a prediction model (``eval.estimate.model``, :mod:`.predict`) is fitted per score
   key on the *fully scored* trials of the study only (the inputs' rows, the other seed trials,
   trials that reached every example): a partially scored trial's values sit at the shared
   examples and would make the predictions depend on the sample (:mod:`.predict`). It predicts
   every example for the trial's coefficients.
   With ``fit: scored`` it fits on every value any earlier trial scored (partly scored rows
   too), which is unbiased only in the census form of step 3.
3. The trial scores the first ``n`` examples of each leaf task's shared order (plus ``audit``
   random ones; :class:`~.design.Design`) through the evaluator's subset slot
   (``Evaluator.score_subset``). Per leaf task the difference estimator
   (:func:`~.estimate.difference_estimate`, moderated variance) gives the task's mean and SE
   (``fit: full``: every scored example a simple random sample; ``fit: scored``: the shared
   prefix a census, the audit part beyond it the sample, :meth:`EstimateScorer.parts`); a
   score key is its leaves' size-weighted mean, an objective its terms' weighted mean.
4. "Score until the trial's place is decided": against each member of the current front (the
   fully scored, feasible trials' non-dominated set), the difference ``member − trial`` per
   objective. A member is scored in full, so the residual-corrected paired difference of the
   two on the trial's examples is exactly ``θ_m − θ̂``, with the trial's SE (the member's
   values act as a control variate whose residuals are 0; :func:`~.estimate.
   paired_difference`). Some member better on every objective with confidence
   (:func:`~.decide.dominated_by`): the trial stops, recorded as stopped by that member, with
   the estimates as its values. Otherwise it scores further down the same order
   (:func:`~.decide.next_fraction`), up to every example: a trial that reaches N is a full
   row, its scores exactly those of a full evaluation (``Evaluator.combine``). At
   ``max_share`` a trial in doubt keeps its estimates, unless ``promote`` lets it score every
   example: no front member beats its estimates on every objective, and the budget
   (a capped trial's examples plus ``promote`` of a full evaluation, on average over the
   sampler's trials) has room (:meth:`EstimateScorer._promoted`).

Optuna is told the estimates; ``TrialRecord.stderr`` holds their SEs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from optuna.trial import TrialState

from evaluators.base import Scores
from search.strategies.estimate.decide import dominated_by, next_fraction, z_value
from search.strategies.estimate.design import Design, census_and_sample, example_order
from search.strategies.estimate.estimate import (
    Estimate,
    difference_estimate,
    weighted_objective,
)
from search.strategies.estimate.predict import History, build_model
from search.strategies.estimate.strategy import EstimatedScoring, EstimateFields
from search.study.record import TrialRecord, decode_values, encode_values

if TYPE_CHECKING:
    import optuna

    from search.strategies.estimate.strategy import EstimateConfig
    from search.study.config import StudyConfig
    from search.study.worker import Runtime

INPUT_LABEL = "single:"  # the seed trials that score one checkpoint alone (SearchSpace)


class EstimateScorer:
    """Estimated scoring of one worker's trials (``eval.estimate``; see the module)."""

    def __init__(
        self,
        cfg: StudyConfig,
        settings: EstimateConfig,
        runtime: Runtime,
        study: optuna.Study,
        name: str,
    ) -> None:
        self.cfg, self.settings, self.runtime, self.study = cfg, settings, runtime, study
        self.name = name  # the strategy's name: its fields' key in TrialRecord.strategies
        self.layout = EstimatedScoring.layout(runtime)
        self.counts = runtime.evaluator.examples_per_task()  # leaf task -> N
        self.total = sum(self.counts.values())
        self.design = Design(cfg.eval.seed, settings.n, settings.audit)
        self.names = list(runtime.pool.names)
        # per score key, its leaves' slices of a full evaluation's values
        self.slices: dict[str, dict[str, slice]] = {}
        for key, leaves in self.layout.leaves.items():
            offset, parts = 0, {}
            for leaf in leaves:
                parts[leaf] = slice(offset, offset + self.counts[leaf])
                offset += self.counts[leaf]
            self.slices[key] = parts
        self.maximize = [o.direction == "maximize" for o in cfg.objectives]
        first = min(settings.n / n for n in self.counts.values())
        self.looks = max(1, math.ceil(math.log(1.0 / first, settings.growth)))
        self._rows: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}  # decoded full rows

    # ------------------------------------------------------------------------------ scoring

    def score(self, trial: optuna.Trial) -> TrialRecord:
        """Score the resident merge: in full, or from a few examples (see the module)."""
        record = TrialRecord.from_trial(trial)
        done = self.completed()
        rows = self.full_rows(done)
        predictions = self.predict(done, record.coefficients)
        if record.seed_trial is not None or predictions is None:
            return self._plain(trial.number)
        members = self._front(rows)
        docs = self._first_docs(trial.number)
        scored = {leaf: np.zeros(0, int) for leaf in self.counts}
        values = {
            key: np.full(sum(self.counts[t] for t in ls), np.nan)
            for key, ls in self.layout.leaves.items()
        }
        looks, stopped_by = 0, None
        shared = {leaf: min(self.settings.n, n) for leaf, n in self.counts.items()}  # by design
        while True:
            new = {leaf: np.setdiff1d(d, scored[leaf]) for leaf, d in docs.items()}
            self._score_docs(new, values)
            scored = {leaf: np.union1d(scored[leaf], new[leaf]) for leaf in self.counts}
            looks += 1
            if all(len(scored[t]) == n for t, n in self.counts.items()):
                break
            objectives, keys = self.estimate(predictions, values, scored, shared)
            differences = {
                number: [
                    Estimate((m - e.mean) if up else (e.mean - m), e.se, e.scored, e.total)
                    for m, e, up in zip(member, objectives, self.maximize, strict=True)
                ]
                for number, member in members.items()
            }
            z = z_value(self.settings.confidence, len(members), self.looks)
            stopped_by = dominated_by(differences, z)
            if stopped_by is not None:
                return self._stopped(
                    trial.number, objectives, keys, values, scored, looks, stopped_by
                )
            spent = sum(len(s) for s in scored.values())
            f = next_fraction(spent / self.total, differences, z, self.settings.growth)
            docs, shared = self._grow(scored, shared, f)
            if all(len(docs[t]) == len(scored[t]) for t in self.counts):  # at max_share
                if not self._promoted(done, members, objectives):
                    return self._stopped(
                        trial.number, objectives, keys, values, scored, looks, None
                    )
                docs = {leaf: np.arange(n) for leaf, n in self.counts.items()}
                shared = dict(self.counts)
        full = {key: tuple(float(v) for v in array) for key, array in values.items()}
        combined = self.runtime.evaluator.combine(full)
        fields = EstimateFields(
            n=self.total,
            total=self.total,
            looks=looks,
            seed=self.design.seed,
            counts=dict(self.counts),
            audit=self.settings.audit,
            model=self.settings.model,
            estimates={k: float(v) for k, v in combined.objectives.items()},
            ses=dict.fromkeys(combined.objectives, 0.0),
        )
        return TrialRecord.of_scores(
            trial.number, combined, self.cfg.objective_names, strategies=self._own(fields)
        )

    def spent(self, record: TrialRecord) -> int:
        """Examples a trial scored: every look (a full evaluation when it has no fields)."""
        fields = EstimateFields.of(record, self.name)
        return fields.n if fields else self.total

    def _promoted(
        self,
        done: Sequence[TrialRecord],
        members: Mapping[int, Sequence[float]],
        objectives: Sequence[Estimate],
    ) -> bool:
        """Whether a trial at the cap scores every example (``promote``): no member of the
        front (trials scored in full) beats its estimates on every objective (the trials that
        ``max_share: 1`` would score in full at once), and the sampler's trials, this one
        scored in full, spend on average at most what a capped trial scores (the shared part up
        to ``max_share`` and the audit) and ``promote`` of a full evaluation more."""
        if self.settings.promote <= 0:
            return False
        signs = np.where(self.maximize, 1.0, -1.0)
        mine = np.array([e.mean for e in objectives]) * signs
        points = np.array(list(members.values()), float).reshape(-1, len(signs)) * signs
        if np.any(np.all(points >= mine, axis=1) & np.any(points > mine, axis=1)):
            return False
        own = [r for r in done if r.seed_trial is None and r.duplicate_of is None]
        used = sum(self.spent(r) for r in own) + self.total
        audit = self.settings.audit
        capped = sum(min(n, self._cap(leaf) + audit) for leaf, n in self.counts.items())
        allowed = capped + self.settings.promote * self.total  # per sampler trial
        return used <= allowed * (len(own) + 1)

    def _own(self, fields: EstimateFields) -> dict[str, dict]:
        return {self.name: fields.to_json()}

    def _plain(self, number: int) -> TrialRecord:
        """A full evaluation (seed trials; trials before the model has the inputs)."""
        scores = self.runtime.evaluator.evaluate(self.runtime.model, self.runtime.tokenizer)
        fields = EstimateFields(
            n=self.total,
            total=self.total,
            seed=self.design.seed,
            counts=dict(self.counts),
            model=self.settings.model,
            estimates={k: float(v) for k, v in scores.objectives.items()},
            ses=dict.fromkeys(scores.objectives, 0.0),
        )
        return TrialRecord.of_scores(
            number, scores, self.cfg.objective_names, strategies=self._own(fields)
        )

    def _stopped(
        self,
        number: int,
        objectives: Sequence[Estimate],
        keys: Mapping[str, Estimate],
        values: Mapping[str, np.ndarray],
        scored: Mapping[str, np.ndarray],
        looks: int,
        by: int | None,
    ) -> TrialRecord:
        """A trial stopped before its full evaluation (by the front member ``by``, or at
        ``max_share`` when ``None``): the estimates as its values, their SEs, what it scored."""
        names = self.cfg.objective_names
        spent = sum(len(s) for s in scored.values())
        fields = EstimateFields(
            n=spent,
            total=self.total,
            looks=looks,
            seed=self.design.seed,
            counts={leaf: self._shared_count(leaf, s) for leaf, s in scored.items()},
            audit=self.settings.audit,
            model=self.settings.model,
            estimates={n: e.mean for n, e in zip(names, objectives, strict=True)},
            ses={n: e.se for n, e in zip(names, objectives, strict=True)},
            values={k: encode_values(v[~np.isnan(v)]) for k, v in values.items()},
            violation=max(1.0 - spent / self.total, 1e-6) if by is not None else 0.0,
            stopped_by=by,
        )
        scores = Scores(
            tasks={k: e.mean for k, e in keys.items()},
            objectives={n: e.mean for n, e in zip(names, objectives, strict=True)},
            stderr={n: e.se for n, e in zip(names, objectives, strict=True)},
            task_stderr={k: e.se for k, e in keys.items()},
        )
        record = TrialRecord.of_scores(number, scores, names, strategies=self._own(fields))
        return dataclasses.replace(record, examples={})

    # ------------------------------------------------------------------------------ the design

    def _first_docs(self, number: int) -> dict[str, np.ndarray]:
        """The first look: ``n`` of each leaf's shared order, and its audit draw."""
        out = {}
        for leaf, n in self.counts.items():
            shared, audit = self.design.sample(leaf, n, number)
            out[leaf] = np.union1d(shared, audit)
        return out

    def _grow(
        self, scored: Mapping[str, np.ndarray], shared: Mapping[str, int], fraction: float
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Further down each leaf's shared order to ``fraction`` (at least one more example;
        every example once any leaf would reach its end), up to ``max_share``: once a leaf is
        at its cap, no leaf grows (a call scores some examples of every leaf). Returns the
        documents to have scored and each leaf's shared part by design (``shared``: before)."""
        targets = {
            leaf: max(self._shared_count(leaf, s) + 1, math.ceil(fraction * n - 1e-9))
            for leaf, s in scored.items()
            for n in (self.counts[leaf],)
        }
        if fraction >= 1.0 or any(k >= self.counts[leaf] for leaf, k in targets.items()):
            targets = dict(self.counts)
        targets = {leaf: min(k, self._cap(leaf)) for leaf, k in targets.items()}
        if any(k <= self._shared_count(leaf, scored[leaf]) for leaf, k in targets.items()):
            return dict(scored), dict(shared)
        out = {}
        for leaf, k in targets.items():
            prefix, _ = self.design.sample(leaf, self.counts[leaf], 0, shared=k)
            out[leaf] = np.union1d(prefix, scored[leaf])
        return out, {leaf: max(k, shared[leaf]) for leaf, k in targets.items()}

    def _cap(self, leaf: str) -> int:
        """The most of a leaf's shared order a trial scores (``max_share``, at least ``n``)."""
        n = self.counts[leaf]
        if self.settings.max_share >= 1.0:
            return n
        return min(n, max(self.settings.n, math.floor(self.settings.max_share * n)))

    def _shared_count(self, leaf: str, scored: np.ndarray) -> int:
        """How far down the shared order ``scored`` reaches (its prefix in the order)."""
        order = example_order(self.counts[leaf], leaf, self.design.seed)
        inside = np.isin(order, scored)
        return int(inside.argmin()) if not inside.all() else len(order)

    def _score_docs(self, docs: Mapping[str, np.ndarray], values: dict[str, np.ndarray]) -> None:
        """Score ``docs`` (every leaf has some) and put the values at their positions."""
        runtime = self.runtime
        chosen = {leaf: tuple(int(d) for d in sorted(d)) for leaf, d in docs.items()}
        subset = runtime.evaluator.score_subset(runtime.model, runtime.tokenizer, chosen)
        for key, where in subset.positions.items():
            got = np.asarray(subset.scores.examples[key], float)
            if len(got) != len(where):
                raise ValueError(f"{key}: {len(got)} values for {len(where)} documents")
            values[key][list(where)] = got

    # ------------------------------------------------------------------------------ estimates

    def estimate(
        self,
        predictions: Mapping[str, np.ndarray],
        values: Mapping[str, np.ndarray],
        scored: Mapping[str, np.ndarray],
        shared: Mapping[str, int] | None = None,
    ) -> tuple[list[Estimate], dict[str, Estimate]]:
        """Per objective and per score key, the estimate from what was scored so far.

        Args:
            predictions: per score key, every example's prediction (:meth:`predict`).
            values: per score key, a full evaluation's values where scored (NaN elsewhere).
            scored: per leaf task, the document indices scored.
        """
        keys: dict[str, Estimate] = {}
        parts_of = {
            leaf: self.parts(leaf, scored[leaf], None if shared is None else shared[leaf])
            for leaf in self.counts
        }
        for key, parts in self.slices.items():
            leaves = []
            for leaf, where in parts.items():
                p, y = predictions[key][where], values[key][where]
                census, sample = parts_of[leaf]
                rest = np.ones(len(p), bool)
                rest[census] = False
                prior = float(np.mean(p[rest] * (1.0 - p[rest]))) if rest.any() else 0.0
                leaves.append(
                    difference_estimate(
                        p,
                        y,
                        sample,
                        census=census,
                        prior_variance=prior,
                        prior_df=self.settings.prior_df,
                    )
                )
            keys[key] = weighted_objective(leaves, [e.total for e in leaves])
        objectives = [
            weighted_objective([keys[k] for k, _ in terms], [w for _, w in terms])
            for terms in (self.layout.terms[o] for o in self.cfg.objective_names)
        ]
        return objectives, keys

    def parts(
        self, leaf: str, scored: np.ndarray, shared: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(census, sample)`` of a leaf's scored documents for the difference estimator.

        ``fit: full``: no census, every scored document a simple random sample (the shared
        prefix and the audit beyond it together are one). ``fit: scored``: the first ``shared``
        of the order (the shared part the design asked for, not where the scored documents
        happen to reach: an audit document right after the prefix stays in the sample) are a
        census (the model may have learnt their values) and the audit documents beyond them
        the sample (:mod:`.design`)."""
        scored = np.asarray(scored, int)
        if self.settings.fit == "full":
            return np.zeros(0, int), scored
        k = self._shared_count(leaf, scored) if shared is None else shared
        order = example_order(self.counts[leaf], leaf, self.design.seed)
        return census_and_sample(order, scored, k)

    def completed(self) -> list[TrialRecord]:
        """The study's complete trials, once per plan (a duplicate reused another's scores)."""
        rows: dict[str, TrialRecord] = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            record = TrialRecord.from_trial(t)
            if record.duplicate_of is None:
                rows.setdefault(record.key, record)
        return list(rows.values())

    def full_rows(self, done: Sequence[TrialRecord] | None = None) -> list[TrialRecord]:
        """The trials scored in full (per-example values of every example) among ``done``
        (default: :meth:`completed`)."""
        done = self.completed() if done is None else done
        return [r for r in done if r.examples and not r.stopped]

    def predict(
        self, done: Sequence[TrialRecord], coefficients: Mapping[str, Sequence[float]]
    ) -> dict[str, np.ndarray] | None:
        """Per score key, every example's prediction for a merge of ``coefficients`` by the
        model fitted on the trials ``done`` (those scored in full, or with ``fit: scored`` every
        value scored); ``None`` until they hold every input's seed trial in full."""
        rows = self.full_rows(done)
        inputs = self._inputs(rows)
        if inputs is None:
            return None
        if self.settings.fit == "scored":
            rows = [r for r in done if r.examples or self._partial(r) is not None]
        return self._predict(inputs, rows, self._weights(coefficients))

    def _partial(self, record: TrialRecord) -> dict[str, np.ndarray] | None:
        """A partly scored trial's values per score key (NaN where not scored), or None."""
        fields = EstimateFields.of(record, self.name)
        if fields is None or fields.full or not fields.values or not fields.counts:
            return None
        design = Design(fields.seed, self.settings.n, fields.audit)
        out = {}
        for key, parts in self.slices.items():
            row = np.full(parts[next(reversed(parts))].stop, np.nan)
            where = []
            for leaf, part in parts.items():
                order = example_order(self.counts[leaf], leaf, fields.seed)
                audit = design.sample(leaf, self.counts[leaf], record.number)[1]
                docs = np.union1d(order[: fields.counts[leaf]], audit)
                where.extend(part.start + int(d) for d in docs)
            got = np.asarray(decode_values(fields.values[key]), float)
            if len(got) != len(where):
                return None  # recorded under another design: not used
            row[sorted(where)] = got
            out[key] = row
        return out

    def _decoded(self, record: TrialRecord) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if record.number not in self._rows:
            if record.examples:
                values = {k: np.asarray(v, float) for k, v in record.per_example().items()}
            else:
                values = self._partial(record) or {}
            self._rows[record.number] = (self._weights(record.coefficients), values)
        return self._rows[record.number]

    def _weights(self, coefficients: Mapping[str, Sequence[float]]) -> np.ndarray:
        """A merge's coefficient vector over the pool: each checkpoint's mean over layer groups,
        normalized."""
        w = np.array([float(np.mean(coefficients[name])) for name in self.names])
        return w / w.sum() if w.sum() > 0 else w

    def _inputs(self, rows: Sequence[TrialRecord]) -> dict[str, np.ndarray] | None:
        """Per score key, the inputs' full values ``(K, N)`` in pool order; ``None`` until every
        input's seed trial has been scored in full."""
        by_label = {r.seed_trial: r for r in rows if r.seed_trial}
        found = [by_label.get(f"{INPUT_LABEL}{name}") for name in self.names]
        if any(r is None for r in found):
            return None
        decoded = [self._decoded(r)[1] for r in found]
        out = {}
        for key in self.layout.leaves:
            array = np.array([d[key] for d in decoded])
            if array.min() < 0.0 or array.max() > 1.0:
                from search.errors import UserError

                raise UserError(
                    f"eval.estimate: {key}'s per-example values leave [0, 1] (min "
                    f"{array.min():.3g}, max {array.max():.3g}); the prediction models need "
                    "scores in [0, 1] (acc, exact_match): set eval.estimate: null"
                )
            out[key] = array
        return out

    def _predict(
        self, inputs: Mapping[str, np.ndarray], rows: Sequence[TrialRecord], weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per score key, every example's prediction for ``weights`` (fitted on full rows that
        are not inputs)."""
        others = [r for r in rows if not (r.seed_trial or "").startswith(INPUT_LABEL)]
        out = {}
        for key, array in inputs.items():
            k, n = array.shape
            if others:
                decoded = [self._decoded(r) for r in others]
                rows_v = np.array([v[key] for _, v in decoded])
                history = History(np.array([w for w, _ in decoded]), rows_v, ~np.isnan(rows_v))
            else:
                history = History.empty(k, n)
            partial = self.settings.fit == "scored"
            model = build_model(self.settings.model, partial=partial).fit(array, history)
            out[key] = np.asarray(model.predict(weights[None, :]), float)[0]
        return out

    def _front(self, rows: Sequence[TrialRecord]) -> dict[int, tuple[float, ...]]:
        """The current front's objective values (exact: its members are scored in full)."""
        feasible = [r for r in rows if r.feasible and len(r.values) == len(self.maximize)]
        signs = np.where(self.maximize, 1.0, -1.0)
        points = np.array([r.values for r in feasible], float).reshape(-1, len(signs)) * signs
        out = {}
        for r, p in zip(feasible, points, strict=True):
            if not np.any(np.all(points >= p, axis=1) & np.any(points > p, axis=1)):
                out[r.number] = r.values
        return out
