"""The ``fisher`` merge method, declared as data (no torch import): what the engine needs."""

from __future__ import annotations

from search.engine.registry import MergeMethod, normalized

EXTRAS = "fisher"  # the kind of the pool's per-tensor extras: each checkpoint's diagonal Fisher


FISHER = MergeMethod(
    name="fisher",
    function="search.strategies.fisher.merge:fisher_merge",
    params=(),
    needs_base=False,
    # nominal: the coefficient of checkpoint i at one entry is w_i F_i / Σ_j w_j F_j
    coefficients=lambda w, p: normalized(w),
    divides_by_weight_sum=lambda params: True,
    extras=(EXTRAS,),
    missing_extras=(
        "each checkpoint's Fisher; none is loaded into the pool (a study computes them from "
        "merge.fisher, `merge-search merge` from parameters.fisher_data)"
    ),
    fused="search.strategies.fisher.merge:fused_kernel",
    extension="search.strategies.fisher.export:FisherExtension",
    min_weight=0.0,
    mergekit=None,  # mergekit 0.1.5 has no Fisher merging; the exported YAML says so
    doc="θ = Σ w_i F_i θ_i / Σ w_i F_i per entry, F_i checkpoint i's diagonal Fisher",
)
