"""Fixtures of gifting's tests: the three services in-process (see harness.py)."""

from tests.gifting.harness import suite

__all__ = ["suite"]
