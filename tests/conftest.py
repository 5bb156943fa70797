"""Fixtures for every test suite."""

from __future__ import annotations

import os

import pytest

_KEEP_PREFIXES = ("TASKMILL_TEST_",)
_KEEP_NAMES = {"TASKMILL_REQUIRE_SERVICES"}


@pytest.fixture(autouse=True)
def _scrub_taskmill_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove ``TASKMILL_*`` settings from the environment, so the developer's shell cannot change
    results (the ``TASKMILL_TEST_*`` service URLs and ``TASKMILL_REQUIRE_SERVICES`` stay)."""
    for name in list(os.environ):
        if name.startswith("TASKMILL_") and name not in _KEEP_NAMES and not name.startswith(_KEEP_PREFIXES):
            monkeypatch.delenv(name, raising=False)
