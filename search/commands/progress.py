"""The launcher's progress bar: finished trials, the best value of each objective, the examples
scored as full-evaluation equivalents, running trials."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from optuna.trial import TrialState
from tqdm import tqdm

from search.study.storage import examples_spent, full_evaluations

if TYPE_CHECKING:
    import optuna

    from search.study.config import StudyConfig


class Progress:
    """A tqdm bar of finished trials, with the best value of each objective so far and the
    full evaluations spent (examples scored / examples of one full evaluation)."""

    def __init__(self, cfg: StudyConfig, study: optuna.Study) -> None:
        self.cfg = cfg
        self.study = study
        self.bar = tqdm(
            total=cfg.n_trials,
            desc=cfg.name,
            unit="trial",
            dynamic_ncols=True,
            file=sys.stderr,
            disable=False,
        )
        self.refresh()

    def refresh(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        complete = [t for t in done if t.state == TrialState.COMPLETE and t.values]
        parts = []
        for i, obj in enumerate(self.cfg.objectives):
            vals = [t.values[i] for t in complete]
            if vals:
                best = max(vals) if obj.direction == "maximize" else min(vals)
                parts.append(f"{obj.name}={best:.3g}")
        evals = full_evaluations(self.study, examples_spent(done))
        if evals is not None:
            of = ""
            if self.cfg.budget.examples:
                of = f"/{full_evaluations(self.study, self.cfg.budget.examples):.1f}"
            parts.append(f"evals={evals:.1f}{of}")
        parts.append(f"running={running}")
        self.bar.n = min(len(done), self.cfg.n_trials)
        self.bar.set_postfix_str(" ".join(parts), refresh=False)
        self.bar.refresh()

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def progress_bar(cfg: StudyConfig, study: optuna.Study) -> Iterator[Progress]:
    progress = Progress(cfg, study)
    try:
        yield progress
    finally:
        progress.close()
