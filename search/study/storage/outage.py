"""A storage outage is a pause, not a crash: retry a storage call with bounded backoff.

A PostgreSQL server that restarts (or a network blip) breaks every call in flight with an
``OperationalError``, which Optuna wraps in a ``StorageInternalError``; SQLite under many local
workers answers ``database is locked`` once its busy timeout runs out. Both pass: the call is
retried, backing off exponentially (``FIRST_S`` doubling up to ``CAP_S``), for up to
``workers.storage_retry_s``; after that one line, a ``UserError``: ``storage URL unreachable for
N s (<first line of the error>)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy.exc

from search.errors import UserError

T = TypeVar("T")

FIRST_S = 0.2  # the first wait: a blip is usually over by then
CAP_S = 5.0  # the longest wait between tries: a server back is noticed within this


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the storage is unreachable or busy.

    PostgreSQL: a lost or refused connection (``OperationalError``, ``InterfaceError``, an
    invalidated connection). SQLite: only ``database is locked`` / ``busy`` (its other
    ``OperationalError``s, e.g. a missing table, are not outages).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            orig = current.orig
            if type(orig).__module__.startswith("sqlite3"):
                text = str(orig).lower()
                return "locked" in text or "busy" in text
            return True
        current = current.__cause__ or current.__context__
    return False


def first_line(exc: BaseException) -> str:
    """The first line of the innermost storage error behind ``exc`` (what the server said)."""
    inner: BaseException = exc
    while (nxt := inner.__cause__ or inner.__context__) is not None and nxt is not inner:
        inner = nxt
    text = str(getattr(inner, "orig", None) or inner).strip()
    return text.splitlines()[0] if text else type(inner).__name__


class Outage:
    """The backoff of one outage: ``wait(exc)`` after each failed try, ``UserError`` once
    ``limit_s`` have passed since the first.

    Args:
        what: the storage as messages name it (e.g. ``storage sqlite:///studies/a.db``).
    """

    def __init__(self, what: str, limit_s: float) -> None:
        self.what = what
        self.limit_s = limit_s
        self.start = time.monotonic()
        self.delay = FIRST_S

    def wait(self, exc: BaseException) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed >= self.limit_s:
            waited = f" for {elapsed:.0f} s" if self.limit_s else ""  # 0: gave up at once
            raise UserError(f"{self.what} unreachable{waited} ({first_line(exc)})") from None
        time.sleep(min(self.delay, self.limit_s - elapsed))
        self.delay = min(self.delay * 2, CAP_S)

    def retry(self, call: Callable[[], T]) -> T:
        """``call()``, tried again on this outage's clock while the storage is out."""
        while True:
            try:
                return call()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self.wait(exc)


def retrying(call: Callable[[], T], what: str, limit_s: float) -> T:
    """``call()``, tried again while the storage is out (:func:`is_outage`), for up to
    ``limit_s`` seconds; then a ``UserError`` naming ``what`` and the storage's error."""
    try:
        return call()
    except Exception as exc:
        if not is_outage(exc):
            raise
        outage = Outage(what, limit_s)
        outage.wait(exc)
    return outage.retry(call)
