"""Fixtures shared by the in-process unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from unit import inprocess


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """An in-process echo upstream (tests/unit/inprocess.py); its base URL."""
    async with inprocess.echo_server() as url:
        yield url
