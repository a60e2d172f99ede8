"""The one error type that reaches the user as a single line, and pydantic errors as one line."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin


class UserError(Exception):
    """Bad input from the user: a config field, a file, a folder, a flag.

    The message is one line that names the file or field and says what is expected.
    The CLI prints it as ``merge-search: error: <message>`` and exits with status 2.
    Raise it before any work starts and before anything is written.
    """


def one_line(exc: Any, root: type, hints: Mapping[str, str] | None = None) -> str:
    """A pydantic ``ValidationError`` as one line ``field.path: what is expected``.

    The first error is shown (with a count of the others); pydantic's union-branch tags are
    dropped from the location; an unknown field lists the fields allowed there (read from
    ``root``, the validated model, by alias where one is set); ``hints`` say what a field
    expects (by field name) in place of pydantic's own message.
    """
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = _drop_union_tags(err["loc"])
    if err["type"] == "extra_forbidden" and err["loc"]:  # the last part is the user's own key
        loc = [*_drop_union_tags(err["loc"][:-1]), err["loc"][-1]]
    field = "".join(f"[{x}]" if isinstance(x, int) else f".{_key(x)}" for x in loc).lstrip(".")
    msg, kind = err["msg"], err["type"]
    hint = next((hints[x] for x in reversed(loc) if hints and x in hints), None)
    if kind == "extra_forbidden":
        allowed = _fields_at(root, loc[:-1])
        msg = "unknown field" + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        msg = "required field is missing"
    elif kind.startswith("value_error") or kind == "assertion_error":
        msg = re.sub(r"^(Value|Assertion) error, ", "", msg)
    elif hint is not None:
        msg = f"expected {hint} (got {err.get('input')!r})"
    elif kind == "too_short":
        n = (err.get("ctx") or {}).get("min_length", 1)
        msg = f"expected at least {n} entr{'y' if n == 1 else 'ies'}"
    elif kind in ("tuple_type", "list_type"):
        msg = f"expected a list (got {err.get('input')!r})"
    else:
        value = err.get("input")
        if isinstance(value, str | int | float | bool) or value is None:
            msg = f"{msg} (got {value!r})"
    more = len(errors) - 1
    more_text = f" ({more} more error{'s' if more > 1 else ''})" if more else ""
    if not field or msg.startswith((f"{field}.", f"{field}:", f"{field}[")):
        return f"{msg}{more_text}"  # the validator named a more precise field itself
    return f"{field}: {msg}{more_text}"


def _key(name: Any) -> str:
    """A key as written in a field path: quoted when it is empty or holds spaces, dots,
    brackets, colons or control characters (an unknown key must stay visible)."""
    text = str(name)
    if not text or any(c in text for c in " .[]:") or not text.isprintable():
        return repr(text)
    return text


def _drop_union_tags(loc: Sequence[Any]) -> list[Any]:
    """Pydantic puts validator and union-member tags (``function-after[...]``, ``float``,
    ``ParamRange``, ``list[...]``) into an error's location; keep the field path."""
    out = []
    for x in loc:
        if isinstance(x, str) and (
            x.startswith(("function-", "tagged-"))
            or x in {"bool", "int", "float", "str"}
            or x[:1].isupper()
            or "[" in x
        ):
            continue
        out.append(x)
    return out


def _fields_at(root: type, loc: Sequence[Any]) -> list[str]:
    """Names (aliases where set) of the fields allowed at ``loc`` inside the model ``root``
    (not those excluded from its dump: a subclass's way to refuse a field it inherits)."""
    from pydantic import BaseModel

    model: Any = root
    for part in loc:
        model = _unwrap(model)
        if isinstance(part, int):
            args = [a for a in get_args(model) if a is not Ellipsis]
            model = args[0] if args else None
        elif isinstance(model, type) and issubclass(model, BaseModel):
            by_name = {f.alias or n: f for n, f in model.model_fields.items()}
            if part not in by_name:
                return []
            model = by_name[part].annotation
        else:
            return []
    model = _unwrap(model)
    if isinstance(model, type) and issubclass(model, BaseModel):  # an excluded field is no input
        return [f.alias or n for n, f in model.model_fields.items() if not f.exclude]
    return []


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``; ``list[X]`` / ``tuple[X, ...]`` stay as they are."""
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) is not None and len(args) == 1 and get_origin(tp) not in (tuple, list, dict):
        return args[0]
    return tp


class DeprecatedSetting(FutureWarning):
    """An old config key or name that still works, for one release, with the same meaning.

    The CLI shows it as one line on stderr, ``merge-search: warning: <message>``.
    """


def deprecated(old: str, new: str, where: str = "") -> None:
    """Warn once per call that ``old`` is read as ``new`` (:class:`DeprecatedSetting`)."""
    import warnings

    prefix = f"{where}: " if where else ""
    warnings.warn(
        f"{prefix}{old} is deprecated, use {new} (same meaning)", DeprecatedSetting, stacklevel=3
    )
