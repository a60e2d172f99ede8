"""Which examples a trial scores: a shared order per task, and a random audit part per trial.

The shared part. Each task's N examples are visited in one order per study
(:func:`example_order`: a permutation seeded by the study's seed and the task's name, the same
on every worker); a trial scores the first ``n`` of it, and scores more by going further down
the same order. Every trial therefore scores the same examples first, so two trials are
compared *paired* (:func:`.estimate.paired_difference`), and the first ``n`` of a uniformly
random permutation are a simple random sample of the N: the difference estimator over them is
unbiased over the draw of the permutation, for predictions that do not depend on it.

The audit part (optional). ``audit`` more examples per trial, drawn uniformly without
replacement from those the shared part did not reach, with a generator seeded by the study's
seed, the task and the trial's number (:meth:`Design.sample`). The shared prefix and an audit
drawn from the rest together are again a simple random sample of the N (a uniform prefix, then
a uniform draw from the remainder). Within one study the prefix is fixed and shared: every
trial's estimate carries the same luck of that prefix; the audit examples differ per trial and
keep the trials' errors apart, and give the :func:`.estimate.difference_estimate` ``census``
form an estimate unbiased over the audit draw alone, the prefix held fixed (see there).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def _rng(*parts: object) -> np.random.Generator:
    text = ":".join(str(p) for p in ("merge-search-estimate", *parts))
    return np.random.default_rng(
        int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    )


def example_order(n: int, task: str, seed: int) -> np.ndarray:
    """The study's fixed order of a task's ``n`` examples (a seeded uniform permutation)."""
    return _rng(seed, task).permutation(n)


@dataclass(frozen=True)
class Design:
    """How many examples a trial scores per task, and which.

    Attributes:
        seed: the study's seed (orders and audit draws follow from it).
        shared: examples of the shared order scored first (at most N).
        audit: examples drawn at random per trial beyond the shared part.
    """

    seed: int
    shared: int
    audit: int = 0

    def __post_init__(self) -> None:
        if self.shared < 0 or self.audit < 0:
            raise ValueError(
                f"design: shared and audit must be >= 0, got {self.shared}, {self.audit}"
            )

    def sample(
        self, task: str, n: int, trial: int, shared: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(shared, audit)`` example indices a trial scores of a task of ``n`` examples.

        ``shared`` overrides :attr:`shared` (a trial that scores further down the order).
        The audit part never overlaps the shared one; both are capped by ``n``.
        """
        order = example_order(n, task, self.seed)
        k = min(n, self.shared if shared is None else shared)
        rest = order[k:]
        a = min(len(rest), self.audit)
        audit = _rng(self.seed, task, "audit", trial).choice(rest, size=a, replace=False)
        return order[:k].copy(), np.asarray(audit, dtype=int)


def census_and_sample(
    order: np.ndarray, scored: np.ndarray, shared: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(census, sample)`` of a trial's scored examples in the census form: the first
    ``shared`` of the study's ``order`` (the shared part the design asked for) and the scored
    examples beyond them (its audit draw). The census is fixed by the design, not by how far
    the scored examples happen to reach down the order: an audit example right after the
    prefix stays in the sample, which is then uniform over everything outside the census."""
    census = np.asarray(order[:shared], dtype=int)
    return census, np.setdiff1d(np.asarray(scored, dtype=int), census)
