"""Pure functions on objective vectors: Pareto front, knee point, hypervolume, preference pick.

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


def knee_point(values: Sequence[Sequence[float]], directions: Directions) -> int:
    """Index of the knee of a front: the row closest to the utopia point after normalization.

    Method: every objective is normalized to [0, 1] over the given rows (1 = best, see
    :func:`normalized_utilities`); the utopia point is then ``(1, ..., 1)`` and the knee is the row
    with the smallest Euclidean distance to it, i.e. the most balanced compromise. This works in
    any number of objectives (unlike the distance to the line through the two extremes, which
    is only defined for two). Ties go to the row with the larger sum of utilities, then to the
    earlier row. Pass the front itself (the normalization depends on the rows given).

    Raises:
        ValueError: when ``values`` is empty.
    """
    if len(values) == 0:
        raise ValueError("knee_point: no rows")
    util = normalized_utilities(values, directions)
    distance = np.linalg.norm(1.0 - util, axis=1)
    order = sorted(
        range(len(util)), key=lambda i: (round(float(distance[i]), 12), -util[i].sum(), i)
    )
    return order[0]


def prefer_point(
    values: Sequence[Sequence[float]], directions: Directions, weights: Sequence[float]
) -> int:
    """Index of the row with the largest weighted sum of normalized utilities.

    Weights are non-negative, one per objective (they need not sum to 1). Utilities are
    normalized over the given rows as in :func:`knee_point`; ties go to the earlier row.

    Raises:
        ValueError: when ``values`` is empty or the weights are malformed.
    """
    if len(values) == 0:
        raise ValueError("prefer_point: no rows")
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(directions),) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError("prefer_point: expected one non-negative weight per objective, not all 0")
    score = normalized_utilities(values, directions) @ w
    return int(np.argmax(np.round(score, 12)))


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
