"""The registry checks a study's merge section against each method's own declaration."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from search.engine.registry import METHODS, ParamSpec, check_merge
from search.strategies import get_method, method_names


def section(method: str, params: dict[str, Any] | None = None, **extra: Any) -> SimpleNamespace:
    """A merge section as the study config holds it (ranges are objects with low and high)."""
    weights = SimpleNamespace(normalize=extra.pop("normalize", None), low=extra.pop("low", 0.0))
    return SimpleNamespace(method=method, params=params or {}, weights=weights)


def span(low: float, high: float) -> SimpleNamespace:
    return SimpleNamespace(low=low, high=high)


def fits(method: str, **params: Any) -> str | None:
    """The error line of ``check_merge`` for a pool that suits the method, else ``None``."""
    n = METHODS[method].n_checkpoints or 3
    try:
        check_merge(section(method, params), n_checkpoints=n, has_base=True)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("name", list(METHODS))
def test_every_declared_parameter_accepts_its_range_and_refuses_beyond_it(name: str) -> None:
    method = METHODS[name]
    for p in method.params:
        if p.name == "normalize":  # set as merge.weights.normalize, never as a parameter
            assert fits(name, normalize=True) == (
                "merge.params.normalize: set it as merge.weights.normalize"
            )
            continue
        assert fits(name, **{p.name: p.default}) is None
        assert p.low is not None and p.high is not None
        assert fits(name, **{p.name: span(p.low, p.high)}) is None
        assert fits(name, **{p.name: span(p.low, p.high + 1)}) == (
            f"merge.params.{p.name}: range [{p.low}, {p.high + 1}] must lie inside the "
            f"method's range [{p.low}, {p.high}]"
        )
        assert fits(name, **{p.name: p.high + 1}) == (
            f"merge.params.{p.name}: expected a value in [{p.low}, {p.high}] or a "
            f"{{low, high}} range (got {p.high + 1!r})"
        )
    known = ", ".join(p.name for p in method.params if p.name != "normalize") or "none"
    assert fits(name, bogus=1.0) == (
        f"merge.params.bogus: method {name!r} has no parameter 'bogus'; expected one of: {known}"
    )


def test_kinds_are_checked_by_the_declaration() -> None:
    flag = ParamSpec("flag", "bool", default=False)
    count = ParamSpec("count", "int", 1, 8, 2)
    flag.check_setting("merge.params.flag", True)
    count.check_setting("merge.params.count", 3)
    count.check_setting("merge.params.count", span(2, 5))
    cases = [
        (flag, 1, "merge.params.flag: expected true or false (got 1)"),
        (flag, span(0, 1), "merge.params.flag: a bool parameter takes true or false, not a range"),
        (count, 2.5, "merge.params.count: expected an integer (got 2.5)"),
        (count, True, "merge.params.count: expected an integer (got True)"),
        (count, span(1.5, 4), "merge.params.count: an int parameter needs integer low and high"),
    ]
    for spec, value, line in cases:
        with pytest.raises(ValueError) as caught:
            spec.check_setting(f"merge.params.{spec.name}", value)
        assert str(caught.value) == line


def test_the_pool_and_the_sections_must_suit_the_method() -> None:
    def line(merge: SimpleNamespace, n: int = 3, base: bool = True) -> str:
        with pytest.raises(ValueError) as caught:
            # the lookup a study uses: the methods strategies provide too (fisher)
            check_merge(
                merge, n_checkpoints=n, has_base=base, names=method_names(), lookup=get_method
            )
        return str(caught.value)

    assert line(section("ties"), base=False) == (
        "base_model: method 'ties' needs a base model; set base_model"
    )
    assert line(section("slerp", {"t": span(0, 1)}), n=3) == (
        "checkpoints: method 'slerp' merges exactly 2 checkpoints (got 3)"
    )
    assert line(section("task_arithmetic", normalize=True)).startswith(
        "merge.weights.normalize: method 'task_arithmetic' has no 'normalize' parameter"
    )
    assert line(section("fisher", low=-1.0)) == (
        "merge.weights.low: method 'fisher' needs weights >= 0.0 (got -1.0)"
    )
    assert line(section("soup")).startswith("merge.method: unknown method 'soup'; expected one")


def test_a_method_that_ignores_the_weights_needs_a_searched_parameter() -> None:
    slerp = METHODS["slerp"]
    slerp.check_searched({"t": span(0.2, 0.8)})
    with pytest.raises(ValueError, match="merge.params: method 'slerp' ignores the weights"):
        slerp.check_searched({"t": 0.5})
    METHODS["linear"].check_searched({})  # the weights are searched
