"""Standard errors of the reductions against lm-eval's own functions and direct computation."""

from __future__ import annotations

import math
import random

import pytest

from evaluators.stats import (
    REDUCTIONS,
    mean_stderr,
    objective_stderr,
    ratio_stderr,
    reduce_samples,
)


def test_mean_stderr_is_lm_evals():
    from lm_eval.api.metrics import mean_stderr as lm_eval_mean_stderr

    values = [random.Random(0).random() for _ in range(50)]
    assert mean_stderr(values) == pytest.approx(lm_eval_mean_stderr(values))
    assert math.isnan(mean_stderr([1.0]))


def test_ratio_stderr_with_equal_denominators_is_the_mean_stderr():
    rng = random.Random(1)
    nums = [rng.uniform(-5, 0) for _ in range(30)]
    assert ratio_stderr(nums, [4.0] * 30) == pytest.approx(mean_stderr([n / 4 for n in nums]))
    assert math.isnan(ratio_stderr([1.0], [2.0]))


def test_ratio_stderr_matches_a_bootstrap():
    rng = random.Random(2)
    pairs = [(rng.uniform(-30, -5) * (w := rng.randint(3, 12)) / 10, w) for _ in range(200)]
    draws = []
    for _ in range(2000):
        sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        draws.append(sum(a for a, _ in sample) / sum(b for _, b in sample))
    mu = sum(draws) / len(draws)
    boot = math.sqrt(sum((d - mu) ** 2 for d in draws) / (len(draws) - 1))
    assert ratio_stderr([a for a, _ in pairs], [b for _, b in pairs]) == pytest.approx(
        boot, rel=0.1
    )


def test_reductions_of_lm_evals_aggregations():
    from lm_eval.api.metrics import bits_per_byte, perplexity, weighted_perplexity

    items = [(-3.0, 2), (-8.0, 5), (-1.5, 1), (-6.0, 3)]
    values, se = reduce_samples(items, REDUCTIONS["weighted_perplexity"])
    assert values == pytest.approx([math.exp(3 / 2), math.exp(8 / 5), math.exp(1.5), math.exp(2)])
    expected = weighted_perplexity(items) * ratio_stderr(
        [a for a, _ in items], [b for _, b in items]
    )
    assert se == pytest.approx(expected)
    values, se = reduce_samples(items, REDUCTIONS["bits_per_byte"])
    assert values[0] == pytest.approx(bits_per_byte([items[0]]))
    lls = [-1.0, -2.0, -0.5]
    values, se = reduce_samples(lls, REDUCTIONS["perplexity"])
    assert values == pytest.approx([math.exp(1), math.exp(2), math.exp(0.5)])
    assert se == pytest.approx(perplexity(lls) * mean_stderr(lls))
    # an aggregation without a reduction: numbers kept, no standard error; pairs dropped
    kept, none = reduce_samples([1, 0.5], None)
    assert kept == (1.0, 0.5) and math.isnan(none)
    assert reduce_samples([("gold", "pred")], None)[0] == ()


def test_objective_stderr_weights_the_terms():
    assert objective_stderr([(1.0, 0.1), (1.0, 0.1)]) == pytest.approx(math.sqrt(0.02) / 2)
    assert objective_stderr([(3.0, 0.2), (1.0, 0.0)]) == pytest.approx(0.15)
