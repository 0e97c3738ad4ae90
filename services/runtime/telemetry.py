"""OpenTelemetry set-up: traces and metrics for every service, exporters chosen by configuration.

`GIFTCOIN_TRACE_EXPORTER`: none (default), console, file (one JSON span per line in
GIFTCOIN_TRACE_FILE), otlp (OTEL_EXPORTER_OTLP_ENDPOINT, gRPC), memory (tests, in-process).
Metrics are scraped from the service's own Prometheus endpoint when GIFTCOIN_METRICS_PORT is set;
otherwise they go where the spans go (for `file`: metrics-<name>.jsonl beside the span file), and
`none` keeps none. The instruments, named by OpenTelemetry's semantic conventions, are listed at
the end of this module and in docs/observability.md.
An export to the collector gives up after GIFTCOIN_TELEMETRY_TIMEOUT_MS (retries included), and so
does the flush at shutdown: an unreachable collector cannot hold a stopping service up for longer.
The service name comes from OTEL_SERVICE_NAME when set, else `giftcoin-<service>`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, Histogram, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

log = logging.getLogger(__name__)

EXPORTERS = ("none", "console", "file", "otlp", "memory")
DEFAULT_TIMEOUT_MS = 2000  # GIFTCOIN_TELEMETRY_TIMEOUT_MS
_lock = threading.Lock()
_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None
_timeout_ms = DEFAULT_TIMEOUT_MS

# Tests that run services in-process read spans and metrics here (GIFTCOIN_TRACE_EXPORTER=memory).
MEMORY_EXPORTER = InMemorySpanExporter()
MEMORY_METRICS = InMemoryMetricReader()


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON object per line (read back by tests and giftctl)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [span_to_json(s) for s in spans]
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_to_json(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    parent = span.parent
    attributes = {k: v if isinstance(v, str | int | bool) else str(v) for k, v in (span.attributes or {}).items()}
    return json.dumps(
        {
            "trace_id": f"{ctx.trace_id:032x}" if ctx else "",
            "span_id": f"{ctx.span_id:016x}" if ctx else "",
            "parent_span_id": f"{parent.span_id:016x}" if parent else "",
            "name": span.name,
            "kind": span.kind.name,
            "service": span.resource.attributes.get("service.name", ""),
            "start_ns": span.start_time,
            "end_ns": span.end_time,
            "status": span.status.status_code.name,
            "attributes": attributes,
            "links": [f"{link.context.trace_id:032x}:{link.context.span_id:016x}" for link in span.links],
        },
        sort_keys=True,
    )


class JsonLinesMetricExporter(MetricExporter):
    """Appends each metrics export as one JSON object per line (the `file` exporter's metrics)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(json.loads(metrics_data.to_json())) + "\n")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        return None


class BoundedBatchSpanProcessor(BatchSpanProcessor):
    """The OTLP exporter's processor, whose shutdown gives up after `timeout_ms` (the SDK's waits
    30 s, and its flush exports batch after batch, each waiting out the exporter's timeout)."""

    def __init__(self, exporter: SpanExporter, timeout_ms: int) -> None:
        super().__init__(exporter, export_timeout_millis=timeout_ms)
        self.timeout_ms = timeout_ms

    def shutdown(self) -> None:
        self._batch_processor.shutdown(timeout_millis=self.timeout_ms)


def metrics_file_for(trace_file: str) -> str:
    """Where the `file` exporter writes metrics: beside the span file, `metrics-<name>`."""
    path = Path(trace_file)
    return str(path.with_name("metrics-" + path.name.removeprefix("traces-")))


def _metric_reader(exporter: str, trace_file: str, timeout_ms: int) -> MetricReader | None:
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return PeriodicExportingMetricReader(
            OTLPMetricExporter(timeout=timeout_ms / 1000), export_timeout_millis=timeout_ms
        )
    if exporter == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
    if exporter == "memory":
        return MEMORY_METRICS
    if exporter == "file":
        return PeriodicExportingMetricReader(
            JsonLinesMetricExporter(metrics_file_for(trace_file)), export_interval_millis=60_000
        )
    return None


def _prometheus_reader(host: str, port: int) -> MetricReader:
    """The service's own Prometheus endpoint, http://<host>:<port>/metrics, read at each scrape."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)
    return PrometheusMetricReader()


def setup_tracing(
    service: str,
    exporter: str,
    trace_file: str = "",
    *,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 0,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> TracerProvider:
    """Install the process's tracer and meter providers once; later calls return the same provider.

    `metrics_port` (not 0): metrics are served there for Prometheus to scrape, instead of being
    pushed with the spans. `timeout_ms` bounds each export to the collector and the final flush.
    """
    global _provider, _meter_provider, _timeout_ms
    with _lock:
        if _provider is not None:
            return _provider
        if exporter not in EXPORTERS:
            raise ValueError(f"GIFTCOIN_TRACE_EXPORTER must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or f"giftcoin-{service}"})
        # With no exporter, recorded spans would only be dropped: sample none. Unsampled spans still
        # carry trace ids (logs, propagation to peers) at a fraction of the cost of recording them.
        sampler = ALWAYS_OFF if exporter == "none" else None
        provider = TracerProvider(resource=resource, sampler=sampler)
        processor: SpanProcessor | None = None
        if exporter == "console":
            processor = SimpleSpanProcessor(ConsoleSpanExporter())
        elif exporter == "file":
            processor = SimpleSpanProcessor(JsonLinesSpanExporter(trace_file))
        elif exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            processor = BoundedBatchSpanProcessor(OTLPSpanExporter(timeout=timeout_ms / 1000), timeout_ms)
        elif exporter == "memory":
            processor = SimpleSpanProcessor(MEMORY_EXPORTER)
        if processor is not None:
            provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        # Without a reader no metric is read: the API's own provider then records nothing, for
        # nothing (the SDK's aggregated every RPC's duration in a histogram that no one read).
        reader = _prometheus_reader(metrics_host, metrics_port) if metrics_port else None
        reader = reader or _metric_reader(exporter, trace_file, timeout_ms)
        if reader is not None:
            _meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
            metrics.set_meter_provider(_meter_provider)
        _provider, _timeout_ms = provider, timeout_ms
        return provider


def shutdown_tracing() -> None:
    """Export the last spans and metrics, giving up on each after the configured timeout."""
    if _provider is not None:
        _provider.shutdown()
    if _meter_provider is not None:
        _meter_provider.shutdown(timeout_millis=_timeout_ms)


# --- background work: traced only when there is some ------------------------------------------------


@contextmanager
def untraced() -> Iterator[None]:
    """No spans from what runs here (a background loop's look for work, a feed's reads): an idle
    service emits none, and a gift's trace is not filled with another's plumbing."""
    with suppress_instrumentation():
        yield


@contextmanager
def traced() -> Iterator[None]:
    """Spans again, inside `untraced`: for the work a background loop found (each piece its own trace,
    or the trace of the gift it continues)."""
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, False))
    try:
        yield
    finally:
        otel_context.detach(token)


def instrumented() -> bool:
    """Whether spans are wanted here (not inside `untraced`)."""
    return is_instrumentation_enabled()


# --- the instruments every service records, named by OpenTelemetry's semantic conventions where they
# have a name for the thing (rpc.*, db.client.*), else under giftcoin.* (docs/observability.md).
# Instruments resolve the global meter provider lazily, so they are created at import.

_meter = metrics.get_meter("giftcoin")
# Seconds, from 5 ms to 10 s: the semantic conventions' advice for RPC durations.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

Attributes = Mapping[str, str | int | bool]


def _seconds(name: str, description: str) -> Histogram:
    return _meter.create_histogram(
        name, unit="s", description=description, explicit_bucket_boundaries_advisory=SECONDS_BUCKETS
    )


class Observed:
    """An asynchronous instrument, read at each collection (a scrape) from the sources that watch it.

    A source is a function returning (value, attributes) pairs; `watch` returns the function that
    stops it (a closing service's database is read no more). Reads are not traced: a scrape must
    not put database spans in the trace backend.
    """

    def __init__(self, kind: str, name: str, unit: str, description: str) -> None:
        self.name = name
        self._sources: dict[object, Callable[[], Iterable[tuple[int | float, Attributes]]]] = {}
        self._lock = threading.Lock()
        create = _meter.create_observable_gauge if kind == "gauge" else _meter.create_observable_up_down_counter
        create(name, callbacks=[self._observe], unit=unit, description=description)

    def watch(self, source: Callable[[], Iterable[tuple[int | float, Attributes]]]) -> Callable[[], None]:
        key = object()
        with self._lock:
            self._sources[key] = source

        def forget() -> None:
            with self._lock:
                self._sources.pop(key, None)

        return forget

    def _observe(self, _options: CallbackOptions) -> list[Observation]:
        with self._lock:
            sources = list(self._sources.values())
        observations = []
        with suppress_instrumentation():
            for source in sources:
                try:
                    observations += [Observation(value, dict(attributes)) for value, attributes in source()]
                except Exception:  # a database that is down: this series is missing from the scrape
                    log.warning("metric %s could not be read", self.name, exc_info=True)
        return observations


def watch_all(*watches: tuple[Observed, Callable[[], Iterable[tuple[int | float, Attributes]]]]) -> Callable[[], None]:
    """`Observed.watch` for several instruments; returns one function that stops them all."""
    forgets = [instrument.watch(source) for instrument, source in watches]

    def forget_all() -> None:
        for forget in forgets:
            forget()

    return forget_all


# RED of every RPC (recorded by runtime.server's interceptor): the count, the errors (by
# rpc.response.status_code and error.type) and the duration are one histogram.
RPC_DURATION = _seconds("rpc.server.call.duration", "Duration of RPCs served, by method and status code")

# The database pool of each service (runtime.db), as the semantic conventions name it.
DB_CONNECTIONS = Observed(
    "updown", "db.client.connection.count", "{connection}", "Connections of the pool, by state (idle, used)"
)
DB_CONNECTIONS_MAX = Observed(
    "updown", "db.client.connection.max", "{connection}", "The most connections the pool may open"
)

# Queues of calls waiting to be served together (runtime.batching): gifting's SendGift batcher.
BATCHER_QUEUE = Observed("updown", "giftcoin.batcher.queue.depth", "{item}", "Items waiting for a batch, by batcher")

# Gifting: the send saga, its value, its queue of unfinished gifts, the live feed.
GIFT_OUTCOMES = _meter.create_counter(
    "giftcoin.gifting.saga.outcomes", unit="{gift}", description="Gifts that ended, by state and failure reason"
)
SAGA_STEP_DURATION = _seconds(
    "giftcoin.gifting.saga.step.duration", "Duration of a saga step (hold, credit, capture, release, complete)"
)
COINS_MOVED = _meter.create_counter(
    "giftcoin.coins.moved",
    unit="{coin}",
    description="Coins moved, by movement kind (wallet: its ledger; gifting: gifts)",
)
DIAMONDS_MOVED = _meter.create_counter(
    "giftcoin.diamonds.moved", unit="{diamond}", description="Diamonds credited to creators by completed gifts"
)
GIFTS_UNFINISHED = Observed(
    "updown", "giftcoin.gifting.gifts.unfinished", "{gift}", "Gifts still pending (being driven or awaiting recovery)"
)
OLDEST_UNFINISHED_AGE = Observed(
    "gauge", "giftcoin.gifting.gifts.oldest_unfinished.age", "s", "How long the oldest pending gift has been pending"
)
FEED_VIEWERS = _meter.create_up_down_counter(
    "giftcoin.gifting.feed.viewers", unit="{viewer}", description="WatchGifts streams this replica serves"
)
FEED_LAG = _seconds("giftcoin.gifting.feed.lag", "From a gift's completion to its delivery to a viewer's stream")

# Wallet: coins reserved by holds not yet captured or released.
HOLDS_ACTIVE = Observed("updown", "giftcoin.wallet.holds.active", "{hold}", "Holds neither captured nor released")
COINS_HELD = Observed("updown", "giftcoin.wallet.coins.held", "{coin}", "Coins reserved by active holds")

# Payout: payouts' outcomes and those still with the provider.
PAYOUT_OUTCOMES = _meter.create_counter(
    "giftcoin.payout.outcomes", unit="{payout}", description="Payouts that ended, by state (paid, failed)"
)
PAYOUTS_IN_FLIGHT = Observed(
    "updown", "giftcoin.payout.payouts.in_flight", "{payout}", "Payouts requested or processing"
)

# Wallet: the stores' server notifications (App Store, Google Play), by store and what became of each.
STORE_NOTIFICATIONS = _meter.create_counter(
    "giftcoin.wallet.store_notifications",
    unit="{notification}",
    description="Store notifications received, by store and outcome (applied, duplicate, ignored, ...)",
)
