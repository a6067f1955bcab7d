"""Fixtures of the device tests: a fake clock and a per-test gpiozero mock factory.

Helpers shared by several modules live in ``device_harness.py`` (this directory is put
on ``sys.path`` by pytest, as ``tests/`` is not a package).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from device_harness import FakeClock

from hw_mocks.gpio import mock_factory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def factory() -> Iterator[Any]:
    """A fresh MockFactory per test (gpiozero's own test-suite pattern)."""
    pins = mock_factory()
    yield pins
    pins.reset()
