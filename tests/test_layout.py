"""The test tree is a package tree: shared test code is imported as ``tests.<path>``."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_folder_is_a_package():
    holding = {p.parent for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts}
    folders = {f for h in holding for f in (h, *h.parents) if f.is_relative_to(TESTS)}
    missing = sorted(
        str(f.relative_to(TESTS.parent)) for f in folders if not (f / "__init__.py").is_file()
    )
    assert not missing, f"add an __init__.py to {', '.join(missing)} (see tests/conftest.py)"
