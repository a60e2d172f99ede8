"""Frank-Wolfe proposals: gradient-informed merges enqueued as trials before the sampler's own.

For a merge θ = Σ_i c_{i,g} θ_i whose coefficients lie on the simplex in each layer group ``g``,
one backward pass through the resident merged model gives the gradient of a loss in every
coefficient at once, ``∂L/∂c_{i,g} = Σ_{t∈g} ⟨∂L/∂θ_t, θ_{i,t}⟩``
(:func:`.gradient.coefficient_gradient`): first-order information that a black-box sampler never
has. FW-Merging walks with it; here, top to bottom:

1. a proxy loss per objective (:class:`ProxyLoss`): the mean token negative log-likelihood of the
   objective tasks' gold targets given their prompts (the texts of a perplexity objective) on
   ``fw.examples`` examples per task of the search split (:mod:`search.calibration`);
2. one path per preference vector ``p`` over the objectives (:func:`preference_vectors`, spread
   evenly), each minimizing ``Σ_j p_j L_j`` from the uniform merge with ``fw.steps`` steps of
   :func:`frank_wolfe`: per layer group, the vertex (one checkpoint) with the most negative
   gradient component, step ``γ_t = 2/(t+2)``; so the paths land at different places along
   the front;
3. :func:`propose` returns each path's endpoint as trial parameters
   (:meth:`~search.study.space.SearchSpace.coefficient_params`, labelled ``fw:<preference>``)
   and what the paths cost (gradient evaluations, backward passes, seconds), which the study
   keeps in its ``fw`` user attr and ``launch`` prints. The gradient steps are not lm-eval trials.

With ``sampler: {name: fw}`` the endpoints are the study's only trials
(:class:`~search.strategies.frank_wolfe.sampler.FrankWolfeSampler`).

On normalized merges: at a point of the simplex, the gradient of ``Σ c_i θ_i / Σ c_i`` differs
from ``⟨∂L/∂θ, θ_i⟩`` by the same amount for every checkpoint of a group, which changes neither
the vertex chosen nor the path.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluators.perplexity import context_length
from search.calibration import batches, objective_proxies, tokenize
from search.engine.likelihood import Batch
from search.engine.materialize import materialize, model_parameters
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.strategies.frank_wolfe.gradient import coefficient_gradient, mean_token_nll

if TYPE_CHECKING:
    from search.strategies.frank_wolfe import FrankWolfeConfig
    from search.study.config import StudyConfig
    from search.study.space import SearchSpace

SEED_PREFIX = "fw:"  # seed_trial label of an endpoint: fw:<objective>=<preference>,...


# ------------------------------------------------------------------------------ the algorithm


def frank_wolfe(
    gradient: Callable[[np.ndarray], np.ndarray], start: np.ndarray, steps: int
) -> list[np.ndarray]:
    """Frank-Wolfe on a product of simplices: each column of ``x`` ``[K, G]`` sums to 1.

    Step ``t``: ``s`` puts each column's mass on the row with the most negative gradient
    component (the linear minimizer over the simplex), and ``x ← (1 − γ_t) x + γ_t s`` with
    ``γ_t = 2 / (t + 2)``. For a convex ``f`` with curvature constant ``C_f`` this gives
    ``f(x_t) − f* ≤ 2 C_f / (t + 2)`` (Jaggi 2013), whatever the start.

    Returns:
        The iterates ``x_0 = start, x_1, ..., x_steps``.
    """
    x = np.asarray(start, dtype=np.float64)
    iterates = [x]
    columns = np.arange(x.shape[1])
    for t in range(steps):
        g = np.asarray(gradient(x), dtype=np.float64)
        vertex = np.zeros_like(x)
        vertex[g.argmin(axis=0), columns] = 1.0
        gamma = 2.0 / (t + 2.0)
        x = (1.0 - gamma) * x + gamma * vertex
        iterates.append(x)
    return iterates


def preference_vectors(n_objectives: int, count: int) -> list[tuple[float, ...]]:
    """``count`` preference vectors over ``n_objectives``, spread evenly over the simplex.

    One objective: ``[(1,)]``. Two: ``(1, 0), ..., (0, 1)`` in equal steps (one vector:
    ``(0.5, 0.5)``). More: the points of the smallest simplex lattice with at least ``count``
    points, chosen greedily farthest from those already chosen, starting at the vertices.
    """
    if n_objectives == 1:
        return [(1.0,)]
    if count == 1:
        return [tuple([1.0 / n_objectives] * n_objectives)]
    if n_objectives == 2:
        return [(1.0 - j / (count - 1), j / (count - 1)) for j in range(count)]
    h = 1
    while math.comb(h + n_objectives - 1, n_objectives - 1) < count:
        h += 1
    lattice = []
    for bars in combinations(range(h + n_objectives - 1), n_objectives - 1):
        edges = (-1, *bars, h + n_objectives - 1)
        lattice.append([(edges[i + 1] - edges[i] - 1) / h for i in range(n_objectives)])
    points = np.asarray(lattice)
    chosen = [int(np.argmax(points[:, 0]))]
    while len(chosen) < count:
        dist = np.min(np.linalg.norm(points[:, None] - points[chosen][None], axis=-1), axis=1)
        chosen.append(int(np.argmax(dist)))
    return [tuple(float(v) for v in points[i]) for i in chosen]


# ------------------------------------------------------------------------------ proxy losses


class ProxyLoss:
    """The objectives' proxy losses at merges of the pool, and their coefficient gradients.

    Each evaluation writes the merge at ``x`` into the resident model
    (:func:`~search.engine.materialize.materialize`), then per objective one backward pass over
    its proxy batches and one :func:`~.gradient.coefficient_gradient`. Points already evaluated
    (every path starts at the same one) are not evaluated again.

    Args:
        pool: the loaded pool.
        model: the resident model.
        plan_of: ``x [K, G] -> MergePlan`` (the plan a trial at these coefficients would score).
        objectives: per objective, ``(weight, batches)`` per task (see
            :func:`~search.strategies.frank_wolfe.gradient.mean_token_nll`).
    """

    def __init__(
        self,
        pool: CheckpointPool,
        model: Any,
        plan_of: Callable[[np.ndarray], MergePlan],
        objectives: Sequence[Sequence[tuple[float, Sequence[Batch]]]],
        n_groups: int,
    ) -> None:
        self.pool = pool
        self.model = model
        self.plan_of = plan_of
        self.objectives = objectives
        self.n_groups = n_groups
        self.params = model_parameters(pool, model)
        self.gradient_evaluations = 0
        self.backward_passes = 0
        self.forward_evaluations = 0  # points whose losses were computed without gradients
        self._memo: dict[bytes, tuple[np.ndarray, np.ndarray | None]] = {}

    def gradients(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(losses [M], gradients [M, K, G])`` at coefficients ``x``."""
        key = np.ascontiguousarray(x, dtype=np.float64).tobytes()
        known = self._memo.get(key)
        if known is not None and known[1] is not None:
            return known  # type: ignore[return-value]
        materialize(self.plan_of(x), self.pool, self.model)
        losses, grads = [], []
        for parts in self.objectives:
            self.model.zero_grad(set_to_none=True)
            losses.append(mean_token_nll(self.model, parts, backward=True))
            grads.append(coefficient_gradient(self.pool, self.params, self.n_groups).numpy())
            self.backward_passes += sum(len(b) for _, b in parts)
        self.model.zero_grad(set_to_none=True)
        self.gradient_evaluations += 1
        result = (np.asarray(losses), np.stack(grads))
        self._memo[key] = result
        return result

    def losses(self, x: np.ndarray) -> np.ndarray:
        """``[M]`` proxy losses at ``x`` (forward passes only, unless already known)."""
        key = np.ascontiguousarray(x, dtype=np.float64).tobytes()
        if key not in self._memo:
            materialize(self.plan_of(x), self.pool, self.model)
            values = [mean_token_nll(self.model, p, backward=False) for p in self.objectives]
            self._memo[key] = (np.asarray(values), None)
            self.forward_evaluations += 1
        return self._memo[key][0]


# --------------------------------------------------------------------------------- proposals


@dataclass(frozen=True)
class FrankWolfePath:
    """One path: its preference over the objectives, its endpoint and its losses."""

    label: str  # the endpoint's seed_trial label
    preference: dict[str, float]
    coefficients: dict[str, list[float]]  # the endpoint, per checkpoint and layer group
    proxy_losses: dict[str, float]  # at the endpoint, per objective
    weighted_loss_per_step: list[float]


@dataclass(frozen=True)
class FrankWolfeRecord:
    """What the paths did: the study keeps it as its ``fw`` user attr (JSON)."""

    steps: int
    start: str  # the paths' start: the uniform merge
    examples: dict[str, dict[str, int]]  # proxy examples per objective and task
    start_proxy_losses: dict[str, float]
    paths: list[FrankWolfePath]
    gradient_evaluations: int
    backward_passes: int
    forward_evaluations: int  # losses reported at the endpoints
    seconds: float
    setup_seconds: float  # of those: reading and tokenizing the proxy sets


@dataclass(frozen=True)
class Proposals:
    """The paths' endpoints as ``(seed_trial label, trial params)`` and what the paths did."""

    seeds: tuple[tuple[str, dict[str, Any]], ...]
    paths: FrankWolfeRecord

    @property
    def record(self) -> dict[str, Any]:
        """The study's ``fw`` user attr."""
        return dataclasses.asdict(self.paths)

    def summary(self) -> str:
        r = self.paths
        return (
            f"Frank-Wolfe: {len(r.paths)} path(s) x {r.steps} steps on "
            f"{sum(n for per in r.examples.values() for n in per.values())} proxy examples: "
            f"{r.gradient_evaluations} gradient evaluations, {r.backward_passes} backward "
            f"passes (+{r.forward_evaluations} forward-only loss evaluations) in "
            f"{r.seconds:.1f} s; {len(self.seeds)} endpoint(s) enqueued as trials"
        )


def propose(
    cfg: StudyConfig,
    settings: FrankWolfeConfig,
    space: SearchSpace,
    pool: CheckpointPool,
    model: Any,
    tokenizer: Any,
) -> Proposals:
    """Run one Frank-Wolfe path per preference vector; their endpoints as trial parameters.

    Args:
        cfg: the study config (``objectives``, ``eval.batch_size``, ``eval.seed``).
        settings: the ``fw`` section.
        space: the study's search space (endpoints become its parameters).
        pool: the pool, its stacks loaded (or loaded on first use).
        model, tokenizer: the resident model, left at the last point evaluated.

    Raises:
        UserError: an unknown task, an unreadable data file, a proxy set without a token to score.
    """
    started = time.perf_counter()
    proxies = objective_proxies(cfg.objectives, cfg.eval_spec(), settings.examples, cfg.eval.seed)
    objectives = _proxy_batches(proxies, tokenizer, context_length(model), cfg, pool.device)
    setup_s = time.perf_counter() - started

    def plan_of(x: np.ndarray) -> MergePlan:
        return space.plan(space.coefficient_params(x.tolist()))

    loss = ProxyLoss(pool, model, plan_of, objectives, space.n_groups)
    k, g = len(space.names), space.n_groups
    start = np.full((k, g), 1.0 / k)
    names = [p.name for p in proxies]
    paths = [
        _path(loss, start, names, preference, settings.steps, space.names)
        for preference in preference_vectors(len(proxies), settings.paths(len(cfg.objectives)))
    ]
    seeds = [
        (path.label, space.coefficient_params(list(path.coefficients.values()))) for path in paths
    ]
    model.zero_grad(set_to_none=True)
    record = FrankWolfeRecord(
        steps=settings.steps,
        start="uniform",
        examples={o.name: {part.label: len(part.examples) for part in o.parts} for o in proxies},
        start_proxy_losses=dict(zip(names, loss.losses(start).tolist(), strict=True)),
        paths=paths,
        gradient_evaluations=loss.gradient_evaluations,
        backward_passes=loss.backward_passes,
        forward_evaluations=loss.forward_evaluations,
        seconds=round(time.perf_counter() - started, 3),
        setup_seconds=round(setup_s, 3),
    )
    return Proposals(tuple(seeds), record)


def _proxy_batches(
    proxies: Sequence[Any], tokenizer: Any, window: int, cfg: StudyConfig, device: Any
) -> list[list[tuple[float, list[Batch]]]]:
    """Per objective, its proxy parts as ``(weight, batches)`` on ``device``."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    objectives = []
    for proxy in proxies:
        parts = []
        for part in proxy.parts:
            tokenized = tokenize(part.examples, tokenizer, window)
            if not tokenized:
                raise UserError(f"fw: objective {proxy.name!r}: {part.label} has no target tokens")
            parts.append((part.weight, batches(tokenized, cfg.eval.batch_size, pad, device)))
        objectives.append(parts)
    return objectives


def _path(
    loss: ProxyLoss,
    start: np.ndarray,
    names: Sequence[str],
    preference: Sequence[float],
    steps: int,
    checkpoints: Sequence[str],
) -> FrankWolfePath:
    """One path from ``start`` minimizing the preference-weighted proxy loss."""
    p = np.asarray(preference)
    iterates = frank_wolfe(_weighted_gradient(loss, p), start, steps)
    end = iterates[-1]
    return FrankWolfePath(
        label=SEED_PREFIX + ",".join(f"{n}={v:g}" for n, v in zip(names, preference, strict=True)),
        preference=dict(zip(names, preference, strict=True)),
        coefficients={n: end[i].tolist() for i, n in enumerate(checkpoints)},
        proxy_losses=dict(zip(names, loss.losses(end).tolist(), strict=True)),
        weighted_loss_per_step=[float(p @ loss.losses(x)) for x in iterates],
    )


def _weighted_gradient(loss: ProxyLoss, p: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The gradient of ``Σ_j p_j L_j`` in the coefficients, ``[K, G]``."""
    return lambda x: np.tensordot(p, loss.gradients(x)[1], axes=1)
