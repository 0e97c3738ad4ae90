"""The suite as three processes, each serving its Prometheus endpoint, after `make demo`'s story.

Module-scoped, once per backend: the story takes seconds, and every test of the module reads the
metrics it left (a test that adds traffic asserts on what it added).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from services.giftctl.demo import SUITE_ENV
from services.giftctl.session import SERVICES
from services.giftctl.suite import Suite, free_port
from tests.conftest import BACKENDS
from tests.support import databases
from tests.support.metrics import Scraped, scrape
from tests.support.story import walk_story


@dataclass
class StorySuite:
    suite: Suite
    metrics_ports: dict[str, int]
    story_lines: list[str] = field(default_factory=list)

    def scrape(self, service: str) -> Scraped:
        return scrape(self.metrics_ports[service])

    def scrape_all(self) -> dict[str, Scraped]:
        return {service: self.scrape(service) for service in SERVICES}


@pytest.fixture(scope="module", params=BACKENDS)
def story_suite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorySuite]:
    backend = str(request.param)
    if backend == "postgres" and not databases.postgres_dsn():
        pytest.skip(f"PostgreSQL not tested: set {databases.POSTGRES_ENV} to a DSN to run this on PostgreSQL")
    data_dir = tmp_path_factory.mktemp(f"story-{backend}")
    targets = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
    ports = {name: free_port() for name in SERVICES}
    service_env = {
        name: {
            "GIFTCOIN_METRICS_PORT": str(ports[name]),
            f"GIFTCOIN_{name.upper()}_DATABASE_URL": databases.fresh_database(backend, name, data_dir),
        }
        for name in SERVICES
    }
    running = StorySuite(Suite(data_dir, targets, SUITE_ENV, service_env), ports)
    try:
        running.suite.start()
        running.story_lines = walk_story(targets, data_dir)
        yield running
    finally:
        running.suite.stop()
