"""The study service: a config becomes an Optuna study that workers run to its budget.

One trial, top to bottom: :mod:`~search.study.config` (validated once) →
:mod:`~search.study.space` (Optuna distributions; a trial's values become a
:class:`~search.engine.plan.MergePlan`) → :mod:`~search.study.samplers` (the Optuna sampler
that proposes) → :mod:`~search.study.worker` (materialize the plan into the resident model,
evaluate, tell; what the trial did is one :class:`~search.study.record.TrialRecord`) ←
:mod:`~search.study.storage` (connect, create or resume, the exact budget, heartbeats).
:mod:`~search.study.launch` prepares a study, runs its workers (:mod:`~search.study.processes`:
spawned processes, their events and stops) and reports to the command's console.

Strategies a config turns on plug into that loop through one interface,
:mod:`~search.study.strategy`; each lives in its own folder under :mod:`search.strategies`,
whose registry says when a config turns it on, and is imported only then. The loop never names
one.

Each trial's optuna-dashboard note is its merge as a mergekit config (:mod:`~search.study.notes`).

Dependencies: :mod:`search.engine`, :mod:`evaluators`, :mod:`search.export` (a trial's note is
the mergekit YAML an export writes) and the strategies' registry (engine, evaluators, export ←
study ← report); Optuna. Nothing here parses command-line arguments or prints.
"""

from __future__ import annotations
