"""The study service: a config becomes an Optuna study that workers run to its budget.

One trial, top to bottom: :mod:`~search.study.config` (validated once) →
:mod:`~search.study.space` (Optuna distributions; a trial's values become a
:class:`~search.engine.plan.MergePlan`) → :mod:`~search.study.samplers` (the Optuna sampler
that proposes) → :mod:`~search.study.worker` (materialize the plan into the resident model,
evaluate, tell) ← :mod:`~search.study.storage` (RDB storage, create or resume, the exact budget,
heartbeats). :mod:`~search.study.launch` runs worker processes with a progress bar
(:mod:`~search.study.progress`). Data-informed inputs are computed once, before the workers:
:mod:`~search.study.fisher_cache` (each checkpoint's Fisher, cached on disk) and
:mod:`~search.study.fw` (Frank-Wolfe proposals enqueued as seed trials).

Dependencies: :mod:`search.engine` and :mod:`evaluators` (engine, evaluators ← study ← report);
Optuna. Nothing here parses command-line arguments.
"""

from __future__ import annotations
