"""The difference estimator on a synthetic pool whose truth is known, by simulation over draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from search.strategies.estimate import (
    Design,
    Estimate,
    difference_estimate,
    paired_difference,
    weighted_objective,
)

N, DRAWS = 200, 4000


def pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A trial's 0/1 values over N examples and a decent, noisy prediction of them."""
    rng = np.random.default_rng(seed)
    difficulty = rng.beta(0.3, 0.3, N)  # most examples nearly always or never solved
    y = (rng.uniform(0, 1, N) < difficulty).astype(float)
    p = np.clip(difficulty + rng.normal(0, 0.15, N), 0, 1)
    return y, p


def simulate(y, p, n, seed=1, draws=DRAWS):
    """Estimates and SEs over independent simple random samples of n examples."""
    rng = np.random.default_rng(seed)
    out = [difference_estimate(p, y, rng.choice(N, n, replace=False)) for _ in range(draws)]
    return np.array([e.mean for e in out]), np.array([e.se for e in out])


def assert_unbiased_and_covered(draws: list[Estimate], truth: float) -> None:
    """Over the draws, the estimates' mean is within 4 Monte-Carlo SEs of ``truth`` and their
    95 % intervals cover it at least 92 % of the time."""
    est = np.array([e.mean for e in draws])
    assert abs(est.mean() - truth) < 4 * est.std(ddof=1) / math.sqrt(len(draws))
    covered = np.mean([e.interval()[0] <= truth <= e.interval()[1] for e in draws])
    assert covered >= 0.92


@pytest.mark.parametrize("n", [20, 40])
def test_unbiased_and_covered(n):
    y, p = pool()
    est, se = simulate(y, p, n)
    truth = y.mean()
    mc_se = est.std(ddof=1) / math.sqrt(DRAWS)
    assert abs(est.mean() - truth) < 4 * mc_se
    lo, hi = est - 1.96 * se, est + 1.96 * se
    coverage = ((lo <= truth) & (truth <= hi)).mean()
    assert 0.92 <= coverage <= 0.975  # normal interval from n = 20..40 residuals
    # the model helps: the estimate is more precise than the plain sample mean
    plain, _ = simulate(y, np.zeros(N), n)
    assert est.std() < 0.8 * plain.std()


def test_se_formula_matches_the_spread_over_draws():
    y, p = pool(3)
    est, se = simulate(y, p, 30, seed=4)
    # E[SE²] = Var(estimate) exactly under sampling without replacement (fpc included)
    assert np.mean(se**2) / est.var(ddof=1) == pytest.approx(1.0, abs=0.08)
    # without the finite-population correction it would be off by 1 / (1 − n/N) = 1.18
    assert np.mean(se**2) / (1 - 30 / N) / est.var(ddof=1) > 1.1


def test_a_bad_model_is_still_unbiased():
    y, p = pool(5)
    for bad in (np.full(N, 0.9), 1.0 - p, np.random.default_rng(6).uniform(0, 1, N)):
        est, _ = simulate(y, bad, 20, seed=7)
        assert abs(est.mean() - y.mean()) < 4 * est.std(ddof=1) / math.sqrt(DRAWS)


def test_full_sample_is_exact():
    y, p = pool()
    e = difference_estimate(p, y, np.arange(N))
    assert e.mean == pytest.approx(y.mean()) and e.se == 0.0 and e.scored == N


def test_census_form_unbiased_over_the_audit_draw_with_a_prefix_fitted_model():
    """The shared prefix held fixed, predictions that copied the prefix's values, an audit
    sample drawn per trial: unbiased over the audit draw (census form), and biased if the
    prefix is used as if it were the sample (why the models use only fully scored rows)."""
    y, _ = pool(8)
    prefix = np.arange(40)  # the study's shared examples: fixed
    p = np.full(N, 0.2)
    p[prefix] = y[prefix]  # a model that learnt the prefix's values (of an identical trial)
    rng = np.random.default_rng(9)
    rest = np.arange(40, N)
    census = [
        difference_estimate(p, y, rng.choice(rest, 20, replace=False), census=prefix)
        for _ in range(DRAWS)
    ]
    est = np.array([e.mean for e in census])
    se = np.array([e.se for e in census])
    assert abs(est.mean() - y.mean()) < 4 * est.std(ddof=1) / math.sqrt(DRAWS)
    assert np.mean(se**2) / est.var(ddof=1) == pytest.approx(1.0, abs=0.1)
    leaked = difference_estimate(p, y, prefix).mean
    assert leaked < y.mean() - 0.15  # residuals 0 on the prefix: the 0.2 elsewhere stays


def test_unbiased_over_the_permutation_draw_of_the_design():
    """Shared orders of many studies (the seed varies): the first n are a uniform sample."""
    y, p = pool(10)
    est = np.array(
        [
            difference_estimate(p, y, Design(seed=s, shared=20).sample("t", N, 0)[0]).mean
            for s in range(2000)
        ]
    )
    assert abs(est.mean() - y.mean()) < 4 * est.std(ddof=1) / math.sqrt(2000)


def test_paired_difference_and_its_se():
    rng = np.random.default_rng(11)
    y_a, p_a = pool(12)
    flip = rng.uniform(0, 1, N) < 0.05  # b disagrees with a on 5 % of the examples
    y_b = np.where(flip, 1 - y_a, y_a)
    p_b = p_a.copy()
    truth = y_a.mean() - y_b.mean()
    draws = [rng.choice(N, 30, replace=False) for _ in range(DRAWS)]
    d = [paired_difference(p_a, y_a, p_b, y_b, s) for s in draws]
    est, se = np.array([e.mean for e in d]), np.array([e.se for e in d])
    assert abs(est.mean() - truth) < 4 * est.std(ddof=1) / math.sqrt(DRAWS)
    assert np.mean(se**2) / est.var(ddof=1) == pytest.approx(1.0, abs=0.1)
    # far tighter than the difference of the two trials' own means
    alone = np.array([difference_estimate(np.zeros(N), y_a, s).se for s in draws])
    assert np.median(se) < 0.5 * math.sqrt(2) * np.median(alone)
    # a member scored in full as its own prediction: residual spread against it
    full = paired_difference(p_a, y_a, y_b, y_b, draws[0])
    assert full.mean == pytest.approx((p_a - y_b).mean() + (y_a - p_a)[draws[0]].mean())


def test_weighted_objective():
    e = weighted_objective([Estimate(0.5, 0.03, 20, 200), Estimate(0.7, 0.04, 10, 100)], [1, 3])
    assert e.mean == pytest.approx(0.25 * 0.5 + 0.75 * 0.7)
    assert e.se == pytest.approx(math.hypot(0.25 * 0.03, 0.75 * 0.04))
    assert (e.scored, e.total) == (30, 300)
    with pytest.raises(ValueError, match="weights"):
        weighted_objective([e], [0])


def test_too_few_examples():
    y, p = pool()
    assert math.isnan(difference_estimate(p, y, [3]).se)
    with pytest.raises(ValueError, match="sample"):
        difference_estimate(p, y, np.arange(N), census=[0])


def test_prior_variance_pools_with_the_sample():
    y, p = pool(13)
    s = np.arange(10)
    r = (y - p)[s]
    e = difference_estimate(p, y, s, prior_variance=0.2, prior_df=5)
    pooled = (r.var(ddof=1) * 9 + 5 * 0.2) / 14
    assert e.se == pytest.approx(math.sqrt(pooled / 10 * (1 - 10 / N)))
    assert e.mean == difference_estimate(p, y, s).mean
    # all residuals 0 in the sample: the prior keeps the SE above 0
    assert difference_estimate(y, y, s, prior_variance=0.1, prior_df=5).se > 0


def test_the_scorers_combination_is_unbiased_and_covered_over_study_orders():
    """What estimated scoring does per trial: a kernel model fitted on fully scored rows of a
    synthetic pool (three inputs, merges whose per-example success is the weighted mix of
    theirs), the first 20 of a study's order, the moderated SE; over 1,000 study orders."""
    from search.strategies.estimate import History, build_model

    rng = np.random.default_rng(21)
    skill = rng.beta(0.4, 0.4, (3, N))  # each input's chance on each example

    def merge(w: np.ndarray) -> np.ndarray:
        return (rng.uniform(0, 1, N) < np.clip(w @ skill + 0.1 * w.prod(), 0, 1)).astype(float)

    inputs = np.array([merge(np.eye(3)[i]) for i in range(3)])
    rows = rng.dirichlet(np.ones(3), 8)
    history = History(rows, np.array([merge(w) for w in rows]), np.ones((8, N), bool))
    w = np.array([0.5, 0.3, 0.2])
    y = merge(w)
    p = build_model("kernel").fit(inputs, history).predict(w)[0]
    prior = float(np.mean(p * (1 - p)))
    draws = [
        difference_estimate(
            p, y, Design(seed=s, shared=20).sample("t", N, 0)[0], prior_variance=prior, prior_df=5
        )
        for s in range(1000)
    ]
    assert_unbiased_and_covered(draws, y.mean())


def test_fit_scored_is_unbiased_over_the_trials_audit_draw():
    """``fit: scored``: a kernel model fitted on partly scored rows (earlier trials that saw the
    study's shared prefix and audits of their own) and on the inputs; the new trial's shared
    prefix counts exactly (census), its audit part corrects the rest; over 1,000 audit draws
    the estimate is unbiased and its 95 % interval covers the full mean."""
    from search.strategies.estimate import History, build_model

    rng = np.random.default_rng(31)
    skill = rng.beta(0.4, 0.4, (3, N))

    def merge(w: np.ndarray) -> np.ndarray:
        return (rng.uniform(0, 1, N) < np.clip(w @ skill + 0.1 * w.prod(), 0, 1)).astype(float)

    inputs = np.array([merge(np.eye(3)[i]) for i in range(3)])
    design = Design(seed=4, shared=10, audit=20)
    rows = rng.dirichlet(np.ones(3), 12)
    values = np.array([merge(w) for w in rows])
    mask = np.zeros_like(values, bool)
    for t in range(len(rows)):  # earlier trials: the prefix and their own audit draws
        mask[t, np.union1d(*design.sample("t", N, 100 + t))] = True
    history = History(rows, np.where(mask, values, np.nan), mask)
    w = np.array([0.5, 0.3, 0.2])
    y = merge(w)
    p = build_model("kernel", partial=True).fit(inputs, history).predict(w)[0]
    prefix = design.sample("t", N, 0)[0]
    rest = np.setdiff1d(np.arange(N), prefix)
    prior = float(np.mean(p[rest] * (1 - p[rest])))
    draws = [
        difference_estimate(
            p,
            y,
            design.sample("t", N, number)[1],
            census=prefix,
            prior_variance=prior,
            prior_df=5,
        )
        for number in range(1000)
    ]
    assert_unbiased_and_covered(draws, y.mean())


def test_an_empty_sample_outside_the_census_has_no_se():
    y, p = pool(12)
    e = difference_estimate(p, y, [], census=np.arange(50), prior_variance=0.1, prior_df=5)
    assert math.isnan(e.se) and e.scored == 50


def test_the_census_is_the_shared_part_the_design_asked_for():
    """An audit example right after the shared prefix stays in the sample."""
    from search.strategies.estimate import census_and_sample, example_order

    order = example_order(50, "t", 1)
    scored = np.union1d(order[:3], order[[10, 20, 30, 40]])  # prefix 2, audit incl. order[2]
    census, sample = census_and_sample(order, scored, 2)
    assert sorted(census) == sorted(order[:2])
    assert sorted(sample) == sorted(order[[2, 10, 20, 30, 40]])
