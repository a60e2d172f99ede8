"""The merge-method registry: what each method is, declared as data (no torch import).

A :class:`MergeMethod` declares everything the rest of the service needs to know about a
method without touching a tensor: its parameters (names, kinds, ranges, defaults), whether it
reads a base model, whether its result depends on the weights at all, how it reports the
coefficient each checkpoint gets, and how mergekit spells it. The config, the search space, the
mergekit YAML writer and the model card read these declarations; nothing outside this module
branches on a method's name.

The tensor math lives in :mod:`search.engine.methods` as pure functions; a declaration names
its function (``function``) and the settings that make it this variant (``function_options``), and
:attr:`MergeMethod.merge` imports it on first use. Variants (``ties``, ``dare_ties``,
``breadcrumbs`` ...) are one function with different settings, as in mergekit.

To add a method: write its tensor function in :mod:`search.engine.methods`, declare it below and
add it to :data:`METHODS` (a method that reads per-tensor extras comes with the strategy that
computes them, declared in its folder and named in the strategy's registry entry,
:data:`search.strategies.STRATEGIES`); the contract tests in
``tests/search/engine/test_methods.py`` run over every entry.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from search.engine.plan import ParamValue
from search.errors import UserError

_FUNCTIONS_MODULE = "search.engine.methods"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a method: its type, valid range (inclusive) and default."""

    name: str
    kind: str  # "float" | "bool" | "int"
    low: float | None = None
    high: float | None = None
    default: ParamValue = 0.0
    doc: str = ""

    def check(self, value: Any) -> ParamValue:
        """The value converted to ``kind``; ``ValueError`` naming the range when it is outside."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.name}: expected true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}: expected a number, got {value!r}")
        if self.kind == "int":
            if float(value) != int(value):
                raise ValueError(f"{self.name}: expected an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if not math.isfinite(value) or (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
        ):
            raise ValueError(
                f"{self.name}: expected a value in [{self.low}, {self.high}], got {value}"
            )
        return value

    def check_setting(self, field: str, value: Any) -> None:
        """A study's setting of this parameter fits the declaration: a fixed value (``bool``,
        ``int`` or ``float``) or a searched range (anything else: an object with ``low`` and
        ``high``, inclusive). ``ValueError`` naming ``field`` (``merge.params.NAME``)."""
        low, high = self.low, self.high
        span = f"[{low}, {high}]"
        if not isinstance(value, bool | int | float):
            if self.kind == "bool":
                raise ValueError(f"{field}: a bool parameter takes true or false, not a range")
            if self.kind == "int" and not (
                float(value.low).is_integer() and float(value.high).is_integer()
            ):
                raise ValueError(f"{field}: an int parameter needs integer low and high")
            if (low is not None and value.low < low) or (high is not None and value.high > high):
                raise ValueError(
                    f"{field}: range [{value.low}, {value.high}] must lie inside "
                    f"the method's range {span}"
                )
            return
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{field}: expected true or false (got {value!r})")
            return
        if isinstance(value, bool) or (self.kind == "int" and not float(value).is_integer()):
            raise ValueError(
                f"{field}: expected {'an integer' if self.kind == 'int' else 'a number'} "
                f"(got {value!r})"
            )
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(
                f"{field}: expected a value in {span} or a {{low, high}} range (got {value!r})"
            )


@dataclass(frozen=True)
class MergekitForm:
    """How mergekit spells a method in its YAML.

    Attributes:
        name: mergekit's ``merge_method``.
        defaults: parameters mergekit assumes when a YAML omits them and that differ from ours
            (mergekit's ``density`` defaults to 1.0): read back as these values.
        written: parameters always written out, with mergekit's own value for them (e.g.
            ``normalize: false`` for task arithmetic, which mergekit would not normalize anyway).
        endpoints: the method interpolates between its two checkpoints and mergekit names the
            first (the ``t = 0`` end) as ``base_model`` while listing both under ``models``.
        note: what a round trip through mergekit does not reproduce bit for bit (``None``:
            it reproduces the merge exactly).
    """

    name: str
    defaults: Mapping[str, ParamValue] = field(default_factory=dict)
    written: Mapping[str, ParamValue] = field(default_factory=dict)
    endpoints: bool = False
    note: str | None = None


@dataclass(frozen=True)
class MergeMethod:
    """A named merge method: its declaration and the tensor function that runs it.

    Attributes:
        name: registry key, the ``method`` of a :class:`~search.engine.plan.MergePlan`.
        function: the name of its tensor function in :mod:`search.engine.methods`, or
            ``"module:function"`` for a method a strategy provides.
        function_options: keyword settings of that function that make this variant.
        params: the parameters it reads from ``plan.params``; a search space is built from these.
        needs_base: whether it reads the base model (task vectors are ``θ_i − θ_base``).
        uses_weights: whether its result depends on the per-checkpoint weights (``slerp``'s
            does not: ``t`` is its one coefficient), so a search space gives it weight
            parameters.
        coefficients: ``(weights of one layer group, params) -> the coefficient applied to each
            checkpoint`` for reporting (normalized when the method normalizes); pure Python.
        divides_by_weight_sum: whether, with ``params``, it divides by the plain sum of weights
            (then a layer group whose weights sum to 0 is an error).
        scale_free: whether, with ``params``, its result is unchanged when a layer group's
            weights are all multiplied by one positive number (it normalizes them); a search
            space then draws the weights on the simplex.
        n_checkpoints: exact number of checkpoints it merges, ``None`` for any number.
        linear_coefficients: for methods whose result is ``Σ c_k θ_k + c_b θ_base``, the name of the
            ``(weights[K], params) -> (coefficients[K], base coefficient)`` function in
            :mod:`search.engine.methods`; materialize then runs one fused weighted sum.
        stochastic: whether ``merge`` draws from its ``generator`` (DARE).
        extras: the kinds of per-tensor extras it reads beside the weights
            (:mod:`search.engine.extras`): the pool holds them and the tensor function gets
            each kind's stack for the tensor as a keyword argument of that name.
        missing_extras: what the error says when the pool holds none of them (what they are
            and where they come from).
        fused: ``"module:function"``, ``(device, dtype, kernel kind) -> kernel``: a kernel built
            once per pool that writes the merge straight into the parameter,
            ``kernel(out, stack, weights, **extras)``, in place of the tensor function.
        extension: ``"module:Class"`` of its :class:`~search.engine.extras.MethodExtension`
            (the extension keys of its YAML; making and exporting its extras).
        min_weight: weights below this are refused (a weighted mean whose denominator must
            stay positive); ``None``: any finite weight.
        convex: with each layer group's weights on the simplex the merge is exactly
            θ = Σ w_i θ_i, so a loss's gradient in the weights is ⟨∂L/∂θ, θ_i⟩ (what
            gradient-informed proposals need).
        mergekit: how mergekit spells it; ``None`` when mergekit lacks the method.
        doc: one line for the README and model card.
    """

    name: str
    function: str
    params: tuple[ParamSpec, ...]
    needs_base: bool
    coefficients: Callable[[Sequence[float], Mapping[str, ParamValue]], list[float]]
    uses_weights: bool = True
    function_options: Mapping[str, Any] = field(default_factory=dict)
    divides_by_weight_sum: Callable[[Mapping[str, ParamValue]], bool] = lambda params: False
    scale_free: Callable[[Mapping[str, ParamValue]], bool] = lambda params: False
    n_checkpoints: int | None = None
    linear_coefficients: str | None = None
    stochastic: bool = False
    extras: tuple[str, ...] = ()
    missing_extras: str = ""
    fused: str | None = None
    extension: str | None = None
    min_weight: float | None = None
    convex: bool = False
    mergekit: MergekitForm | None = None
    doc: str = ""
    param_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_names", frozenset(p.name for p in self.params))

    @property
    def mergekit_name(self) -> str | None:
        return self.mergekit.name if self.mergekit else None

    @property
    def merge(self) -> Callable[..., Any]:
        """The tensor function with this variant's settings (imports torch on first use)."""
        module, _, name = self.function.rpartition(":")
        function = getattr(importlib.import_module(module or _FUNCTIONS_MODULE), name)
        return partial(function, **self.function_options) if self.function_options else function

    @property
    def extension_impl(self) -> Any:
        """Its :class:`~search.engine.extras.MethodExtension` (``None``: none)."""
        if self.extension is None:
            return None
        module, _, name = self.extension.partition(":")
        return getattr(importlib.import_module(module), name)()

    @property
    def linear_form(self) -> Callable[..., Any] | None:
        """``(weights[K], params) -> (coefficients[K], base coefficient)`` for linear methods."""
        if self.linear_coefficients is None:
            return None
        return getattr(importlib.import_module(_FUNCTIONS_MODULE), self.linear_coefficients)

    def resolve_params(
        self, given: Mapping[str, Any] | Sequence[tuple[str, Any]]
    ) -> dict[str, ParamValue]:
        """All parameters with defaults filled in; ``UserError`` for unknown names or bad values."""
        given = dict(given)
        unknown = sorted(set(given) - self.param_names)
        if unknown:
            supported = ", ".join(p.name for p in self.params) or "none"
            raise UserError(
                f"method {self.name}: unknown parameter {', '.join(unknown)}; "
                f"supported: {supported}"
            )
        resolved: dict[str, ParamValue] = {}
        for spec in self.params:
            try:
                resolved[spec.name] = spec.check(given.get(spec.name, spec.default))
            except ValueError as exc:
                raise UserError(f"method {self.name}: parameter {exc}") from None
        return resolved

    def check_searched(self, params: Mapping[str, Any]) -> None:
        """A method that ignores the weights (``slerp``) needs one of its parameters searched
        (a value in ``params`` that is a range, not a number): else nothing would be searched."""
        if not self.uses_weights and all(
            isinstance(v, bool | int | float) for v in params.values()
        ):
            raise ValueError(
                f"merge.params: method {self.name!r} ignores the weights; "
                "give a {low, high} range "
                f"for one of: {', '.join(p.name for p in self.params)}"
            )


# ---------------------------------------------------------------------------------------------
# Reporting coefficients: what each checkpoint contributes, per layer group (plain floats)


def normalized(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    if total == 0:
        raise UserError(f"weights {list(weights)} sum to 0; normalize divides by their sum")
    return [w / total for w in weights]


def _lambda_scaled(weights: Sequence[float], params: Mapping[str, ParamValue]) -> list[float]:
    lam = float(params.get("lambda", 1.0))
    base = normalized(weights) if params.get("normalize", False) else list(weights)
    return [lam * w for w in base]


def _normalizes(params: Mapping[str, ParamValue]) -> bool:
    return bool(params.get("normalize", False))


# ---------------------------------------------------------------------------------------------
# Declarations

_DENSITY = ParamSpec("density", "float", 0.01, 1.0, 0.5, "fraction of each task vector kept")
_LAMBDA = ParamSpec("lambda", "float", 0.0, 2.0, 1.0, "scale of the merged task vector")
_GAMMA = ParamSpec(
    "gamma", "float", 0.0, 0.5, 0.01, "fraction of largest-magnitude entries dropped"
)
# mergekit's density defaults to 1.0 (keep everything); ours to 0.5.
_MERGEKIT_DENSITY = {"density": 1.0}
# task arithmetic, DARE and breadcrumbs never normalize here: say so to mergekit.
_NOT_NORMALIZED = {"normalize": False}
_DARE_NOTE = (
    "mergekit draws its own random masks and rescales kept entries to the task vector's L1 "
    "norm (here: by 1/density); the merge is reproduced in distribution only."
)


def _normalize_param(default: bool) -> ParamSpec:
    return ParamSpec("normalize", "bool", None, None, default, "divide by the sum of weights")


LINEAR = MergeMethod(
    name="linear",
    function="linear_merge",
    params=(_normalize_param(True),),
    needs_base=False,
    coefficients=lambda w, p: normalized(w) if p["normalize"] else list(w),
    divides_by_weight_sum=_normalizes,
    scale_free=_normalizes,
    linear_coefficients="linear_coefficients",
    convex=True,
    mergekit=MergekitForm("linear"),
    doc="θ = Σ w_i θ_i (÷ Σ w_i when normalize)",
)
TASK_ARITHMETIC = MergeMethod(
    name="task_arithmetic",
    function="task_arithmetic_merge",
    params=(_LAMBDA,),
    needs_base=True,
    coefficients=_lambda_scaled,
    linear_coefficients="task_arithmetic_coefficients",
    mergekit=MergekitForm("task_arithmetic", written=_NOT_NORMALIZED),
    doc="θ = θ_b + λ Σ w_i (θ_i − θ_b)",
)
TIES = MergeMethod(
    name="ties",
    function="task_vector_merge",
    function_options={"sparsify": "magnitude", "elect_sign": True},
    params=(_DENSITY, _LAMBDA, _normalize_param(True)),
    needs_base=True,
    coefficients=_lambda_scaled,
    scale_free=_normalizes,  # sign election and the agreeing weights' mean ignore the scale
    mergekit=MergekitForm("ties", defaults=_MERGEKIT_DENSITY),
    doc="trim each task vector to its top density, elect signs, disjoint (weighted) mean",
)
DARE_LINEAR = MergeMethod(
    name="dare_linear",
    function="task_vector_merge",
    function_options={"sparsify": "random", "elect_sign": False},
    params=(_DENSITY, _LAMBDA),
    needs_base=True,
    coefficients=_lambda_scaled,
    stochastic=True,
    mergekit=MergekitForm(
        "dare_linear", defaults=_MERGEKIT_DENSITY, written=_NOT_NORMALIZED, note=_DARE_NOTE
    ),
    doc="drop task-vector entries with probability 1 − density, rescale by 1/density, sum",
)
DARE_TIES = MergeMethod(
    name="dare_ties",
    function="task_vector_merge",
    function_options={"sparsify": "random", "elect_sign": True},
    params=(_DENSITY, _LAMBDA),
    needs_base=True,
    coefficients=_lambda_scaled,
    stochastic=True,
    mergekit=MergekitForm(
        "dare_ties", defaults=_MERGEKIT_DENSITY, written=_NOT_NORMALIZED, note=_DARE_NOTE
    ),
    doc="DARE drop and rescale, then TIES sign election",
)
BREADCRUMBS = MergeMethod(
    name="breadcrumbs",
    function="task_vector_merge",
    function_options={"sparsify": "band", "elect_sign": False},
    params=(_DENSITY, _GAMMA, _LAMBDA),
    needs_base=True,
    coefficients=_lambda_scaled,
    mergekit=MergekitForm("breadcrumbs", defaults=_MERGEKIT_DENSITY, written=_NOT_NORMALIZED),
    doc="drop the largest gamma and the smallest entries of each task vector, keep density, sum",
)
SLERP = MergeMethod(
    name="slerp",
    function="slerp_merge",
    params=(ParamSpec("t", "float", 0.0, 1.0, 0.5, "0 = first checkpoint, 1 = second"),),
    needs_base=False,
    uses_weights=False,
    coefficients=lambda w, p: [1.0 - float(p["t"]), float(p["t"])],
    n_checkpoints=2,
    mergekit=MergekitForm(
        "slerp",
        endpoints=True,
        note="mergekit 0.1.5 interpolates each output row separately; here each tensor is one "
        "vector, so mergekit's result differs slightly.",
    ),
    doc="spherical interpolation between two checkpoints (linear when nearly parallel)",
)

METHODS: dict[str, MergeMethod] = {
    m.name: m for m in (LINEAR, TASK_ARITHMETIC, TIES, DARE_LINEAR, DARE_TIES, BREADCRUMBS, SLERP)
}

# What a YAML for ``merge-search merge`` says for a method mergekit lacks (it is ours, not
# mergekit's: ``mergekit-yaml`` refuses it).
NOT_IN_MERGEKIT = (
    "mergekit 0.1.5 has no {name} method: this config is merge-search's own extension of "
    "mergekit's format; reproduce it with `merge-search merge`, not `mergekit-yaml`."
)


def get_method(name: str) -> MergeMethod:
    """The built-in method ``name``; ``UserError`` listing the supported names otherwise (the
    lookup that includes the methods strategies provide is :func:`search.strategies.get_method`)."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown merge method {name!r}; supported: {', '.join(METHODS)}") from None


def check_merge(
    merge: Any,
    *,
    n_checkpoints: int,
    has_base: bool,
    names: Sequence[str] | None = None,
    lookup: Callable[[str], MergeMethod] | None = None,
) -> MergeMethod:
    """A study config's ``merge`` section against the declaration of the method it names.

    Args:
        merge: the section: ``method`` (a name), ``params`` (name -> a fixed value or a searched
            range, see :meth:`ParamSpec.check_setting`), ``weights.normalize`` (``None`` when
            not set) and ``weights.low``.
        n_checkpoints: how many checkpoints the study merges.
        has_base: whether the study gives a base model.
        names, lookup: every method's name and how to get one (default: the built-in
            :data:`METHODS`; a study passes those of :mod:`search.strategies`, which include the
            methods strategies provide).

    Returns:
        the method.

    Raises:
        ValueError: one line naming the config field (``merge.params.density: ...``).
    """
    names = list(METHODS) if names is None else names
    if merge.method not in names:
        raise ValueError(
            f"merge.method: unknown method {merge.method!r}; expected one of: {', '.join(names)}"
        )
    method = (lookup or METHODS.__getitem__)(merge.method)
    if method.needs_base and not has_base:
        raise ValueError(f"base_model: method {method.name!r} needs a base model; set base_model")
    if method.n_checkpoints is not None and n_checkpoints != method.n_checkpoints:
        raise ValueError(
            f"checkpoints: method {method.name!r} merges exactly {method.n_checkpoints} "
            f"checkpoints (got {n_checkpoints})"
        )
    specs = {p.name: p for p in method.params}
    if merge.weights.normalize is not None and "normalize" not in specs:
        raise ValueError(
            f"merge.weights.normalize: method {method.name!r} has no 'normalize' "
            "parameter; remove it"
        )
    if "normalize" in merge.params:
        raise ValueError("merge.params.normalize: set it as merge.weights.normalize")
    for name, value in merge.params.items():
        field = f"merge.params.{name}"
        if name not in specs:
            known = ", ".join(n for n in specs if n != "normalize") or "none"
            raise ValueError(
                f"{field}: method {method.name!r} has no parameter {name!r}; "
                f"expected one of: {known}"
            )
        specs[name].check_setting(field, value)
    if method.min_weight is not None and merge.weights.low < method.min_weight:
        raise ValueError(
            f"merge.weights.low: method {method.name!r} needs weights >= "
            f"{method.min_weight} (got {merge.weights.low})"
        )
    return method
