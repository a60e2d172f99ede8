"""Pure functions on objective vectors: Pareto front, the choice of ``--knee`` / ``--prefer``
(the largest mean lead over the uniform merge among the rows that beat it on every
objective), hypervolume.

Every function takes the objective values as rows (one row per trial, one column per
objective) plus the study's directions (``"maximize"`` / ``"minimize"`` per column) and returns
indices into those rows, so callers keep their own trial bookkeeping. Internally values are
turned into *losses* (minimize every column) or into *utilities* normalized to [0, 1] over the
front (1 is best on that objective).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Directions = Sequence[str]

# What ``--knee`` and ``--prefer`` maximize, in one sentence each (the CLI help, the pareto
# report and the model card say it).
KNEE_RULE = (
    "among the front members that beat the uniform merge on every objective, the one with the "
    "largest mean lead over it (on held-out scores when the study has them; when no member beats "
    "it on every objective, the one whose smallest lead is largest): no other member's values "
    "can move the choice"
)
PREFER_RULE = (
    "among the front members that beat the uniform merge on every objective of positive weight, "
    "the one with the largest weighted sum of leads over it (on held-out scores when the study "
    "has them; when none does, the largest smallest lead divided by its weight)"
)


def to_losses(values: Sequence[Sequence[float]], directions: Directions) -> np.ndarray:
    """Values as an ``(n, m)`` float array with every objective turned into one to minimize."""
    arr = np.asarray(values, dtype=float).reshape(len(values), len(directions))
    signs = np.array([_sign(d) for d in directions], dtype=float)
    return arr * signs


def dominates(a: Sequence[float], b: Sequence[float], directions: Directions) -> bool:
    """True when ``a`` is at least as good as ``b`` on every objective and better on one."""
    la, lb = to_losses([a, b], directions)
    return bool(np.all(la <= lb) and np.any(la < lb))


def pareto_front(values: Sequence[Sequence[float]], directions: Directions) -> list[int]:
    """Indices of the non-dominated rows, in input order.

    Rows with identical values do not dominate each other, so all copies stay on the front;
    de-duplicate before calling if that matters. With one objective the front is every row that
    reaches the best value.
    """
    if len(values) == 0:
        return []
    losses = to_losses(values, directions)
    front = []
    for i, row in enumerate(losses):
        others = np.delete(losses, i, axis=0)
        dominated = np.any(np.all(others <= row, axis=1) & np.any(others < row, axis=1))
        if not dominated:
            front.append(i)
    return front


def normalized_utilities(values: Sequence[Sequence[float]], directions: Directions) -> np.ndarray:
    """Each objective rescaled to [0, 1] over the given rows, 1 = best, 0 = worst.

    An objective on which all rows are equal is 1 for every row (nothing to trade off).
    """
    util = -to_losses(values, directions)
    low, high = util.min(axis=0), util.max(axis=0)
    span = high - low
    out = np.ones_like(util)
    varied = span > 0
    out[:, varied] = (util[:, varied] - low[varied]) / span[varied]
    return out


def leads(
    values: Sequence[Sequence[float]], directions: Directions, reference: Sequence[float]
) -> np.ndarray:
    """Each row's lead over ``reference`` (a value vector) per objective, positive = better:
    ``value - reference`` for maximized objectives, ``reference - value`` for minimized ones."""
    return to_losses([reference], directions)[0] - to_losses(values, directions)


def knee_point(
    values: Sequence[Sequence[float]],
    directions: Directions,
    reference: Sequence[float] | None = None,
) -> int:
    """Index of the row ``export --knee`` chooses.

    With ``reference`` (the uniform merge's values; what every caller in merge-search passes):
    among the rows that beat the reference on every objective, the one with the largest sum
    of leads (:func:`leads`, in the objectives' own units: the largest mean lead); when no row
    does, the row whose smallest lead is largest (max-min). Why the mean among the rows ahead
    on every objective: the verdict users check is the lead on the mean of the objectives, and
    requiring a lead on each keeps the choice from trading one skill below the uniform merge
    for the other. A row's score depends on that row and the reference alone, so adding or
    removing other rows (a single checkpoint that is extreme on one objective, say) never
    changes which of the remaining rows is chosen, and a row that beats the reference on every
    objective always wins over one that does not. Ties go to the earlier row (max-min: to the
    larger sum of leads first).

    Without ``reference``: the row closest to the utopia point after normalizing every
    objective to [0, 1] over the given rows (:func:`normalized_utilities`; ties: larger sum of
    utilities, then earlier row). That normalization lets an extreme row stretch an axis and
    drag the choice; use it only where no reference exists.

    Raises:
        ValueError: when ``values`` is empty.
    """
    if len(values) == 0:
        raise ValueError("knee_point: no rows")
    if reference is not None:
        lead = leads(values, directions, reference)
        return _choose(lead.min(axis=1), lead.sum(axis=1))
    util = normalized_utilities(values, directions)
    distance = np.linalg.norm(1.0 - util, axis=1)
    order = sorted(
        range(len(util)), key=lambda i: (round(float(distance[i]), 12), -util[i].sum(), i)
    )
    return order[0]


def prefer_point(
    values: Sequence[Sequence[float]],
    directions: Directions,
    weights: Sequence[float],
    reference: Sequence[float] | None = None,
) -> int:
    """Index of the row ``export --prefer`` chooses, for non-negative ``weights`` (one per
    objective, not all 0; they need not sum to 1).

    With ``reference`` (the uniform merge's values): among the rows that beat the reference on
    every objective with ``w_i > 0``, the largest weighted sum of leads ``lead @ w``; when no
    row does, the largest ``min_i lead_i / w_i`` over those objectives (the reference-point
    achievement function: how far the row reaches from the reference in the direction ``w``).
    Equal weights give :func:`knee_point`'s choice; like it, a row's score depends on that row
    and the reference alone, and a row that beats the reference on every weighted objective
    wins over one that does not. Ties: the earlier row (max-min: the larger weighted sum first).

    Without ``reference``: the largest weighted sum of utilities normalized over the given rows
    (pulled by extreme rows, as :func:`knee_point` without one).

    Raises:
        ValueError: when ``values`` is empty or the weights are malformed.
    """
    if len(values) == 0:
        raise ValueError("prefer_point: no rows")
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(directions),) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError("prefer_point: expected one non-negative weight per objective, not all 0")
    if reference is not None:
        lead = leads(values, directions, reference)
        used = w > 0
        scaled = lead[:, used] / w[used]
        return _choose(scaled.min(axis=1), lead @ w)
    score = normalized_utilities(values, directions) @ w
    return int(np.argmax(np.round(score, 12)))


def _choose(worst: np.ndarray, total: np.ndarray) -> int:
    """The rows ahead on every objective (``worst > 0``) first, the largest ``total`` among
    them (ties: the earlier row); without such a row the largest ``worst`` (ties: the larger
    ``total``, then the earlier row)."""

    def key(i: int) -> tuple[int, float, float, int]:
        w, t = round(float(worst[i]), 12), round(float(total[i]), 12)
        return (0, -t, 0.0, i) if w > 0 else (1, -w, -t, i)

    return min(range(len(worst)), key=key)


def best_point(values: Sequence[Sequence[float]], directions: Directions, objective: int) -> int:
    """Index of the row best on one objective (column ``objective``); ties go to the earlier row."""
    if len(values) == 0:
        raise ValueError("best_point: no rows")
    losses = to_losses(values, directions)[:, objective]
    return int(np.argmin(losses))


def reference_point(values: Sequence[Sequence[float]], directions: Directions) -> np.ndarray:
    """The nadir of the rows as a *value* vector: the worst value seen on each objective.

    Used as the hypervolume reference point; rows equal to it on an objective add no volume.
    """
    losses = to_losses(values, directions)
    return losses.max(axis=0) * np.array([_sign(d) for d in directions])


def hypervolume(
    values: Sequence[Sequence[float]], directions: Directions, reference: Sequence[float]
) -> float:
    """Hypervolume dominated by the rows and bounded by ``reference`` (a value vector).

    Rows that are not strictly better than the reference on every objective add nothing and are
    dropped. One and two objectives are computed exactly here (a sweep); three or more go to
    Optuna's WFG implementation (``optuna._hypervolume.compute_hypervolume``: exact, but not
    part of Optuna's public API, hence the local 1-D/2-D path).
    """
    m = len(directions)
    ref = to_losses([reference], directions)[0]
    if len(values) == 0:
        return 0.0
    losses = to_losses(values, directions)
    losses = losses[np.all(losses < ref, axis=1)]
    if len(losses) == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - losses[:, 0].min())
    if m == 2:
        return _hypervolume_2d(losses, ref)
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(losses, ref))


def hypervolume_history(
    values: Sequence[Sequence[float]], directions: Directions, reference: Sequence[float]
) -> list[float]:
    """Hypervolume of the first ``k`` rows for ``k = 1..n`` (rows in trial order)."""
    out, kept = [], []
    for row in values:
        kept.append(row)
        front = [kept[i] for i in pareto_front(kept, directions)]
        kept = front
        out.append(hypervolume(kept, directions, reference))
    return out


def parse_prefer(text: str, names: Sequence[str]) -> list[float]:
    """Parse ``"a=0.7,b=0.3"`` into one weight per objective name (missing names get 0).

    Raises:
        ValueError: one line naming the bad piece and the objective names that exist.
    """
    weights: dict[str, float] = {}
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        name, sep, raw = piece.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise ValueError(
                f"--prefer: {piece!r}: expected OBJECTIVE=WEIGHT with OBJECTIVE one of "
                f"{', '.join(names)}"
            )
        try:
            weight = float(raw)
        except ValueError:
            raise ValueError(f"--prefer: {piece!r}: the weight must be a number") from None
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"--prefer: {piece!r}: the weight must be a finite number >= 0")
        if name in weights:
            raise ValueError(f"--prefer: objective {name!r} given twice")
        weights[name] = weight
    if not weights or not any(w > 0 for w in weights.values()):
        raise ValueError(
            f"--prefer: expected OBJECTIVE=WEIGHT pairs with at least one weight > 0 "
            f"(objectives: {', '.join(names)})"
        )
    return [weights.get(n, 0.0) for n in names]


def _sign(direction: str) -> float:
    if direction == "minimize":
        return 1.0
    if direction == "maximize":
        return -1.0
    raise ValueError(f"direction: expected 'maximize' or 'minimize', got {direction!r}")


def _hypervolume_2d(losses: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume of loss points (all strictly inside ``ref``) by a sweep over x."""
    order = np.lexsort((losses[:, 1], losses[:, 0]))
    volume, best_y = 0.0, float(ref[1])
    for x, y in losses[order]:
        if y < best_y:
            volume += (float(ref[0]) - float(x)) * (best_y - float(y))
            best_y = float(y)
    return volume
