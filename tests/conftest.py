"""Fixtures every test module shares: databases on both backends, callers, in-process servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import databases

BACKENDS = ["sqlite", "postgres"]


def pytest_report_header(config: pytest.Config) -> str:
    if databases.postgres_dsn():
        return f"giftcoin: storage tests run on SQLite and PostgreSQL ({databases.POSTGRES_ENV} is set)"
    return (
        f"giftcoin: PostgreSQL NOT tested — {databases.POSTGRES_ENV} is not set; "
        "storage tests run on SQLite only and their PostgreSQL variants are skipped"
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres" and not databases.postgres_dsn():
        pytest.skip(f"PostgreSQL not tested: set {databases.POSTGRES_ENV} to a DSN to run this on PostgreSQL")
    return str(request.param)


@pytest.fixture
def make_database(backend: str, tmp_path: Path) -> Callable[[str], str]:
    """`make_database("wallet")` -> the URL of a fresh, migrated wallet database on this test's backend."""

    def make(service: str) -> str:
        return databases.fresh_database(backend, service, tmp_path)

    return make


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    databases.drop_created_databases()
