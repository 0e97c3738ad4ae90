from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData

from services.runtime.clock import FakeClock
from services.runtime.db import Database
from services.runtime.ledger import LedgerTables, ledger_tables
from services.runtime.tables import request_ids_table
from tests.support import databases


class RuntimeSchema:
    def __init__(self, db: Database) -> None:
        self.metadata = MetaData()
        self.request_ids = request_ids_table(self.metadata)
        self.ledger: LedgerTables = ledger_tables(self.metadata)
        self.db = db
        self.metadata.create_all(db.engine)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def schema(backend: str, tmp_path: Path) -> Iterator[RuntimeSchema]:
    db = Database.from_url(databases.empty_database(backend, tmp_path), pool_size=20)
    yield RuntimeSchema(db)
    db.dispose()
