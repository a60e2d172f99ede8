"""Per-example predictions: each example's expected score for a new coefficient vector.

One score key (a task's metric) at a time. What a model may be fitted on:

- ``inputs``: the K inputs' full per-example values, a ``(K, N)`` array (the seed trials that
  score each checkpoint alone; 0/1 for ``acc`` / ``exact_match``);
- a :class:`History` of trials scored so far: their coefficient vectors ``(T, K)``, their
  per-example values ``(T, N)`` and a mask ``(T, N)`` of the examples each one scored.

A model answers, for coefficient vectors ``w`` (``(M, K)``, a merge's normalized weights), a
prediction ``p_j(w)`` in [0, 1] for every example j (``(M, N)``).

Which rows a model may use, and why it matters (:mod:`.estimate`). The difference estimator is
unbiased over the draw of the scored examples only if the predictions do not depend on which
examples were drawn. Trials share one order (:mod:`.design`), so a *partially* scored earlier
trial has values exactly at the examples the new trial scores and nowhere else: a model that
learnt per-example parameters from those values would predict the scored examples better than
the unscored ones, and the residual correction would no longer cover the unscored ones. The
models here therefore use, by default, only *fully* scored rows (the inputs, and trials scored
in full: seed trials, front members); ``partial=True`` lifts that, for ``eval.estimate.fit:
scored``, where the shared examples count exactly (a census) and only a random audit part drawn
per trial corrects the rest (:mod:`.estimate`, census form).

The models (chosen between by ``bench/estimate.py``, on the correlation of predictions with
observed values and on the estimate's RMSE):

- :class:`Mixture`: ``p_j(w) = Σ_i w_i y_ij``, the inputs' outcomes mixed by the weights (the
  prediction of a model whose per-example behaviour is the weighted vote of its inputs);
- :class:`Kernel`: a Nadaraya–Watson regression over fully scored trials, shrunk to the
  mixture: ``p_j(w) = (λ m_j(w) + Σ_t k_t(w) y_tj) / (λ + Σ_t k_t(w))`` with
  ``k_t(w) = exp(−‖w − w_t‖² / 2h²)``; ``h`` and ``λ`` by leave-one-trial-out error;
- :class:`Logistic`: a per-example logistic regression on the coefficients,
  ``logit p_j(w) = o_j(w) + β_j·[1, w, H(w)]`` with the mixture's clipped logit as offset
  ``o_j`` and a ridge penalty ``λ‖β_j‖²/2`` (so that with little data it stays the mixture);
  ``H(w)`` is the weights' entropy over ``log K`` (how much of a merge it is). Fitted by Newton
  steps batched over examples.

No library fits these: IRT packages (``py-irt``, ``girth``) fit abilities of the respondents
they saw, not of a new weighted merge of them, and regression libraries would need a model per
example; the batched Newton step is 20 lines of numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

EPS = 0.05  # the mixture's values are clipped to [EPS, 1 − EPS] before its logit (0/1 inputs)


@dataclass(frozen=True)
class History:
    """Trials scored so far on one score key.

    Attributes:
        weights: ``(T, K)`` coefficient vectors (normalized merge weights).
        values: ``(T, N)`` per-example values (anything, NaN included, where ``mask`` is False).
        mask: ``(T, N)`` bool, True where the trial scored the example.
    """

    weights: np.ndarray
    values: np.ndarray
    mask: np.ndarray

    @classmethod
    def empty(cls, k: int, n: int) -> History:
        """No trials yet."""
        return cls(np.zeros((0, k)), np.zeros((0, n)), np.zeros((0, n), bool))

    def full_rows(self) -> History:
        """Only the trials that scored every example."""
        keep = self.mask.all(axis=1)
        return History(self.weights[keep], self.values[keep], self.mask[keep])

    def __len__(self) -> int:
        return int(self.weights.shape[0])


class Model(Protocol):
    """A per-example prediction model: fitted once per history, then asked for many ``w``."""

    def fit(self, inputs: np.ndarray, history: History) -> Model: ...

    def predict(self, weights: np.ndarray) -> np.ndarray: ...


def _rows(weights: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.asarray(weights, float))


def mixture(inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``p_j(w) = Σ_i w_i y_ij`` for each row of ``weights`` (``(M, K)`` -> ``(M, N)``)."""
    return np.clip(_rows(weights) @ np.asarray(inputs, float), 0.0, 1.0)


def entropy(weights: np.ndarray) -> np.ndarray:
    """Each row's weight entropy over ``log K`` (0 for one input, 1 for the uniform merge)."""
    w = np.clip(_rows(weights), 0.0, None)
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    k = w.shape[1]
    h = -(w * np.log(np.where(w > 0, w, 1.0))).sum(axis=1)
    return h / np.log(k) if k > 1 else np.zeros(len(w))


class Mixture:
    """The inputs' outcomes mixed by the weights; nothing to fit but the inputs."""

    def __init__(self, partial: bool = False) -> None:
        self.partial = partial  # accepted for a uniform call; the mixture uses no history

    def fit(self, inputs: np.ndarray, history: History) -> Mixture:
        self.inputs = np.asarray(inputs, float)
        return self

    def predict(self, weights: np.ndarray) -> np.ndarray:
        return mixture(self.inputs, weights)


class Kernel:
    """Nadaraya–Watson over fully scored trials, shrunk to :class:`Mixture` (see the module).

    Args:
        bandwidths: the kernel widths ``h`` tried (distances between weight vectors).
        priors: the mixture's pseudo-weights ``λ`` tried.
        partial: also use partially scored rows (per example, where scored). Breaks the
            unbiasedness of the plain estimate under a shared order; unbiased with the census
            form (``fit: scored``).
    """

    def __init__(
        self,
        bandwidths: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4),
        priors: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0),
        partial: bool = False,
    ) -> None:
        self.bandwidths, self.priors, self.partial = bandwidths, priors, partial

    def fit(self, inputs: np.ndarray, history: History) -> Kernel:
        self.inputs = np.asarray(inputs, float)
        self.history = history if self.partial else history.full_rows()
        self.h, self.lam = self.bandwidths[len(self.bandwidths) // 2], self.priors[-1]
        if len(self.history) >= 3:  # leave-one-trial-out choice of (h, λ)
            best = np.inf
            for h in self.bandwidths:
                for lam in self.priors:
                    err = self._loo_error(h, lam)
                    if err < best:
                        best, self.h, self.lam = err, h, lam
        return self

    def _smooth(
        self, weights: np.ndarray, h: float, lam: float, leave_out: bool = False
    ) -> np.ndarray:
        w = _rows(weights)
        hw, hv, hm = self.history.weights, self.history.values, self.history.mask
        d2 = ((w[:, None, :] - hw[None, :, :]) ** 2).sum(axis=2)  # (M, T)
        k = np.exp(-d2 / (2.0 * h * h))
        if leave_out:
            np.fill_diagonal(k, 0.0)
        y = np.where(hm, hv, 0.0)
        num = lam * mixture(self.inputs, w) + k @ y
        den = lam + k @ hm.astype(float)
        return np.clip(num / den, 0.0, 1.0)

    def _loo_error(self, h: float, lam: float) -> float:
        p = self._smooth(self.history.weights, h, lam, leave_out=True)
        m = self.history.mask
        return float(((p - np.where(m, self.history.values, 0.0)) ** 2)[m].mean())

    def predict(self, weights: np.ndarray) -> np.ndarray:
        if len(self.history) == 0:
            return mixture(self.inputs, weights)
        return self._smooth(weights, self.h, self.lam)


class Logistic:
    """Per-example ridge logistic regression on ``[1, w, H(w)]`` with the mixture as offset.

    Fitted on the inputs' rows (``w = e_i``) and the history's rows (fully scored ones unless
    ``partial``): for each example j, Newton steps on
    ``Σ_t m_tj ℓ(y_tj, σ(o_tj + x_t·β_j)) + λ‖β_j‖²/2``, all examples at once.

    Args:
        ridge: ``λ``; larger keeps the predictions nearer the mixture.
        steps: Newton steps (the problem is strictly convex; 15 reach 1e-8 here).
        partial: also use partially scored rows (``fit: scored``; see the module).
    """

    def __init__(self, ridge: float = 1.0, steps: int = 15, partial: bool = False) -> None:
        self.ridge, self.steps, self.partial = ridge, steps, partial

    @staticmethod
    def _features(weights: np.ndarray) -> np.ndarray:
        w = _rows(weights)
        return np.column_stack([np.ones(len(w)), w, entropy(w)])

    def _offset(self, weights: np.ndarray) -> np.ndarray:
        m = np.clip(mixture(self.inputs, weights), EPS, 1.0 - EPS)
        return np.log(m / (1.0 - m))

    def fit(self, inputs: np.ndarray, history: History) -> Logistic:
        self.inputs = np.asarray(inputs, float)
        k, n = self.inputs.shape
        rows = history if self.partial else history.full_rows()
        w = np.vstack([np.eye(k), rows.weights])
        y = np.vstack([self.inputs, np.where(rows.mask, rows.values, 0.0)])
        mask = np.vstack([np.ones((k, n), bool), rows.mask]).astype(float)
        x = self._features(w)  # (R, D)
        off = self._offset(w)  # (R, N)
        d = x.shape[1]
        beta = np.zeros((n, d))
        eye = self.ridge * np.eye(d)
        for _ in range(self.steps):
            p = 1.0 / (1.0 + np.exp(-(off + x @ beta.T)))  # (R, N)
            grad = ((mask * (p - y)).T @ x) + self.ridge * beta  # (N, D)
            a = mask * p * (1.0 - p)  # (R, N)
            hess = np.einsum("rd,rn,re->nde", x, a, x) + eye  # (N, D, D)
            beta = beta - np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        self.beta = beta
        return self

    def predict(self, weights: np.ndarray) -> np.ndarray:
        z = self._offset(weights) + self._features(weights) @ self.beta.T
        return 1.0 / (1.0 + np.exp(-z))


MODELS = {"mixture": Mixture, "kernel": Kernel, "logistic": Logistic}


def build_model(name: str, **options: object) -> Model:
    """The model registered as ``name`` (:data:`MODELS`), built with ``options``."""
    if name not in MODELS:
        raise ValueError(f"estimate.model: expected one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**options)  # type: ignore[arg-type]
