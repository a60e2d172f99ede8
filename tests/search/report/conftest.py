"""Fixtures of the report tests (defined in ``tests/search/report_fixtures.py``)."""

from tests.search.report_fixtures import exportable, handmade, launched, rechosen  # noqa: F401
