"""The ``regmean`` merge method, declared as data (no torch import): what the engine needs."""

from __future__ import annotations

from search.engine.registry import MergeMethod, ParamSpec, normalized

EXTRAS = "gram"  # the kind of the pool's per-tensor extras: each linear layer's input Gram matrix

ALPHA = ParamSpec(
    "alpha",
    "float",
    0.0,
    1.0,
    1.0,  # the formula as written; Jin et al. found scaling the off-diagonals down often helps
    "scale of each Gram matrix's off-diagonal entries (1: plain RegMean; 0: a per-input-feature "
    "weighted mean)",
)

REGMEAN = MergeMethod(
    name="regmean",
    function="search.strategies.regmean.merge:regmean_merge",
    params=(ALPHA,),
    needs_base=False,
    # nominal: a linear layer is (Σ w_i G_i)⁻¹ Σ w_i G_i W_i, other tensors Σ w_i θ_i / Σ w_i
    coefficients=lambda w, p: normalized(w),
    divides_by_weight_sum=lambda params: True,
    scale_free=lambda params: True,  # w and c·w give the same merge
    extras=(EXTRAS,),
    missing_extras=(
        "each checkpoint's Gram matrices; none are loaded into the pool (a study computes them "
        "from merge.regmean, `merge-search merge` from parameters.regmean_data)"
    ),
    extension="search.strategies.regmean.export:RegMeanExtension",
    min_weight=0.0,
    mergekit=None,  # mergekit 0.1.5 has no RegMean; the exported YAML says so
    doc="linear layers W = (Σ w_i G_i)⁻¹ Σ w_i G_i W_i in the input space, G_i = X_iᵀX_i of "
    "checkpoint i's own inputs (off-diagonals × alpha); other tensors Σ w_i θ_i / Σ w_i",
)
