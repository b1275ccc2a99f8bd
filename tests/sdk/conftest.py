"""Fixtures shared by the SDK tests (run by tests/sdk/run.sh against `wrenn dev`)."""

import pytest
from wrenn import Capsule
from wrenn.exceptions import WrennNotFoundError


@pytest.fixture
def capsule():
    """A running capsule, destroyed after the test."""
    c = Capsule(wait=True)
    try:
        yield c
    finally:
        try:
            c.destroy()
        except WrennNotFoundError:
            pass
