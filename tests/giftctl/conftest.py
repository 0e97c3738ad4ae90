"""Fixtures of giftctl's tests: `books`, the three services in-process (tests/reconciler/conftest.py)."""

from tests.reconciler.conftest import books

__all__ = ["books"]
