"""Reading a study back: the Pareto front, baselines and held-out re-scores, plots, the choice.

- :mod:`~search.report.frontier` — pure functions on objective vectors (front, knee,
  hypervolume, preference);
- :mod:`~search.report.view` — :class:`StudyView`, the completed trials of a study;
- :mod:`~search.report.scores` — the inputs' and the uniform merge's scores, held-out re-scores
  (cached in the study);
- :mod:`~search.report.pareto_report` — the report of ``merge-search pareto``;
- :mod:`~search.report.table` and :mod:`~search.report.plots` — the text table and the plots
  drawn from that report;
- :mod:`~search.report.choose` — picking a trial and exporting its merge;
- :mod:`~search.report.dashboard` — optuna-dashboard on the study's storage.

Dependencies: :mod:`search.study`, :mod:`search.strategies` (the registry), :mod:`search.export`,
:mod:`search.engine`, :mod:`evaluators` (through the study's worker runtime); it is the top of
the library.
"""

from __future__ import annotations
