"""Estimated scoring: score a few examples per trial and estimate the rest, with an honest SE.

A trial scores a small part of each task's examples; its score is estimated by a *difference
estimator*: the mean of a model's per-example predictions over all examples, corrected by the
mean residual (observed minus predicted) over the examples scored. Under simple random sampling
the correction makes the estimate unbiased whatever the model; a good model only makes it
precise (the standard error is the residuals' spread, not the scores').

Modules, one job each (pure numpy; no Optuna, no lm-eval):

- :mod:`.predict` — per-example predictions for a new coefficient vector, fitted on the inputs'
  full per-example values and on the trials scored so far (:class:`Mixture`, :class:`Kernel`,
  :class:`Logistic`);
- :mod:`.design` — which examples a trial scores: a shared, seeded order per task (so trials
  are paired on the same examples), an optional random audit part per trial, and which scored
  examples count exactly in the census form (``fit: scored``);
- :mod:`.estimate` — the difference estimator, its standard error with the finite-population
  correction, the paired difference of two trials, the weighted objective;
- :mod:`.decide` — whether a trial's place on the front is still in doubt, and how many
  examples it should score next.

Why written here: survey-sampling libraries give the difference (model-assisted) estimator for
a fixed auxiliary variable, and IRT libraries fit abilities; none predicts a merge's
per-example scores from its coefficients nor ties the estimate to a design shared by trials.
"""

from __future__ import annotations

from search.strategies.estimate.decide import dominated_by, next_fraction, next_size, z_value
from search.strategies.estimate.design import Design, census_and_sample, example_order
from search.strategies.estimate.estimate import (
    Estimate,
    difference_estimate,
    paired_difference,
    weighted_objective,
)
from search.strategies.estimate.predict import (
    MODELS,
    History,
    Kernel,
    Logistic,
    Mixture,
    build_model,
)

__all__ = [
    "MODELS",
    "Design",
    "Estimate",
    "History",
    "Kernel",
    "Logistic",
    "Mixture",
    "build_model",
    "census_and_sample",
    "difference_estimate",
    "dominated_by",
    "example_order",
    "next_fraction",
    "next_size",
    "paired_difference",
    "weighted_objective",
    "z_value",
]
