"""Racing's statistics: the fixed example order, rungs, the paired test and its level."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.stats import Objective, Term, paired_difference
from search.strategies.staged.racing import (
    MIN_EXAMPLES,
    dominated_with_confidence,
    example_order,
    rung_size,
    z_value,
)

TWO = (
    Objective("code", True, (Term("code/acc", 1.0),)),
    Objective("instr", True, (Term("instr/acc", 1.0),)),
)


def test_the_example_order_is_fixed_per_study_and_task() -> None:
    a = example_order(200, "demo_code", seed=0)
    assert sorted(a.tolist()) == list(range(200))
    assert np.array_equal(a, example_order(200, "demo_code", seed=0))  # any worker, any trial
    assert not np.array_equal(a, example_order(200, "demo_instruct", seed=0))
    assert not np.array_equal(a, example_order(200, "demo_code", seed=1))


def test_rung_sizes_grow_to_all_examples() -> None:
    assert [rung_size(200, f) for f in (0.125, 0.25, 0.5, 1.0)] == [25, 50, 100, 200]
    assert [rung_size(1000, f) for f in (0.1, 1.0)] == [100, 1000]
    assert rung_size(40, 0.125) == rung_size(40, 0.25) == MIN_EXAMPLES  # at least MIN_EXAMPLES
    assert rung_size(10, 0.5) == 10  # never more than the task has


def test_paired_difference_is_the_weighted_mean_of_task_differences() -> None:
    objective = Objective("mix", True, (Term("a", 3.0), Term("b", 1.0)))
    member = {"a": np.array([1, 1, 0, 1.0]), "b": np.array([1, 0, 0.0])}
    cand = {"a": np.array([0, 1, 0, 0.0]), "b": np.array([0, 0, 1.0])}
    d, se = paired_difference(objective, member, cand)
    da, db = np.array([1, 0, 0, 1.0]), np.array([1, 0, -1.0])
    assert d == pytest.approx(0.75 * da.mean() + 0.25 * db.mean())
    expected = (0.75**2 * da.var(ddof=1) / 4 + 0.25**2 * db.var(ddof=1) / 3) ** 0.5
    assert se == pytest.approx(expected)
    lower = Objective("ppl", False, (Term("a", 1.0),))
    assert paired_difference(lower, member, cand)[0] == pytest.approx(-da.mean())


def test_a_clearly_worse_merge_is_stopped_and_a_front_merge_never() -> None:
    rng = np.random.default_rng(0)
    n = 25
    strong = {"code/acc": (rng.random(n) < 0.9) * 1.0, "instr/acc": (rng.random(n) < 0.9) * 1.0}
    weak = {"code/acc": strong["code/acc"] * (rng.random(n) < 0.2), "instr/acc": np.zeros(n)}
    z = z_value(0.95, n_members=3, n_looks=3)
    assert dominated_with_confidence(TWO, weak, {7: strong}, z) == 7
    # a member is never better than itself, and a trade-off (better on one objective) survives
    assert dominated_with_confidence(TWO, strong, {7: strong}, z) is None
    tradeoff = {"code/acc": np.ones(n), "instr/acc": np.zeros(n)}
    assert dominated_with_confidence(TWO, tradeoff, {7: strong}, z) is None


def test_the_level_holds_when_nothing_dominates() -> None:
    """Null case: the candidate equals the member in distribution; stops stay below alpha."""
    rng = np.random.default_rng(1)
    confidence, members, looks, n = 0.95, 4, 3, 25
    z = z_value(confidence, members, looks)
    stops = 0
    sims = 2000
    for _ in range(sims):
        cand = {k: (rng.random(n) < 0.5) * 1.0 for k in ("code/acc", "instr/acc")}
        front = {
            i: {k: (rng.random(n) < 0.5) * 1.0 for k in ("code/acc", "instr/acc")}
            for i in range(members)
        }
        stops += dominated_with_confidence(TWO, cand, front, z) is not None
    # per look the level is <= (1 - confidence) / looks; binomial slack of 4 SE on 2000 draws
    alpha = (1 - confidence) / looks
    assert stops / sims <= alpha + 4 * (alpha * (1 - alpha) / sims) ** 0.5


def test_rungs_add_documents_of_every_task_and_cover_each_once() -> None:
    from search.strategies.staged.racing import plan_rungs

    counts = {"a": 200, "b": 40}
    rungs = plan_rungs(counts, [0.125, 0.25, 0.5, 1.0], seed=0)
    # b (40 docs) has 25 after the first rung, then 25, 25 (nothing new), then 40: the 0.25 and
    # 0.5 boundaries are merged into the last rung so that every rung adds documents of both
    assert [len(r["a"]) for r in rungs] == [25, 175]
    assert [len(r["b"]) for r in rungs] == [25, 15]
    for task, n in counts.items():
        seen = [d for r in rungs for d in r[task]]
        assert sorted(seen) == list(range(n))  # each document once
        order = example_order(n, task, seed=0).tolist()
        assert set(rungs[0][task]) == set(order[:25])  # the study's order, first come first
    assert len(plan_rungs({"tiny": 8}, [0.125, 0.25, 0.5, 1.0], seed=0)) == 1  # no early stop


def test_partial_reads_a_full_evaluation_at_the_same_examples() -> None:
    from search.strategies.staged.racing import Partial

    leaves = {"g/acc": ("t1", "t2"), "t1/acc": ("t1",)}
    counts = {"t1": 4, "t2": 3}
    full = {"g/acc": [10, 11, 12, 13, 20, 21, 22], "t1/acc": [10, 11, 12, 13]}
    partial = Partial(leaves, counts)
    docs = {"t1": [1, 3], "t2": [0]}
    partial.add(docs, {"g/acc": [11, 13, 20], "t1/acc": [11, 13]})
    at = partial.at(full)
    assert at is not None
    assert at["g/acc"].tolist() == [11, 13, 20] and at["t1/acc"].tolist() == [11, 13]
    assert partial.scored == 3
    with pytest.raises(ValueError, match="not every example"):
        partial.full()
    partial.add({"t1": [0, 2], "t2": [1, 2]}, {"g/acc": [10, 12, 21, 22], "t1/acc": [10, 12]})
    assert partial.full() == {k: tuple(float(x) for x in v) for k, v in full.items()}
    assert partial.at({"g/acc": [1, 2], "t1/acc": [1]}) is None  # scored on other examples


def test_front_keeps_the_non_dominated_points() -> None:
    from search.strategies.staged.racing import front

    points = [[0.5, 0.5], [0.6, 0.4], [0.4, 0.4], [0.5, 0.5], [0.7, 0.1]]
    assert front(points, [True, True]) == [0, 1, 3, 4]  # ties stay, (0.4, 0.4) goes
    assert front(points, [False, True]) == [0, 2, 3]  # low first, high second


def test_a_stopped_trial_violates_the_racing_constraint_by_what_it_skipped() -> None:
    from search.strategies.staged.racing import violation

    assert violation(50, 400) == pytest.approx(0.875)
    assert 0 < violation(399, 400) < violation(100, 400)
