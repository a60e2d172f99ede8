"""The study tests' shared fixtures: ``postgres`` (see :func:`postgres_or_skip`)."""

from __future__ import annotations

import pytest

from tests.search.study_fixtures import postgres_or_skip


@pytest.fixture(scope="module")
def postgres() -> str:
    """The shared PostgreSQL's URL; skips where it is unreachable, fails under ``CI``."""
    return postgres_or_skip()
