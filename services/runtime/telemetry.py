"""OpenTelemetry set-up: traces and metrics for every service, exporters chosen by configuration.

`GIFTCOIN_TRACE_EXPORTER`: none (default), console, file (one JSON span per line in
GIFTCOIN_TRACE_FILE), otlp (OTEL_EXPORTER_OTLP_ENDPOINT, gRPC), memory (tests, in-process).
Metrics go to the same place (for `file`: metrics-<name>.jsonl beside the span file); none keeps none.
The service name comes from OTEL_SERVICE_NAME when set, else `giftcoin-<service>`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import metrics, trace
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
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

EXPORTERS = ("none", "console", "file", "otlp", "memory")
_lock = threading.Lock()
_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None

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


def metrics_file_for(trace_file: str) -> str:
    """Where the `file` exporter writes metrics: beside the span file, `metrics-<name>`."""
    path = Path(trace_file)
    return str(path.with_name("metrics-" + path.name.removeprefix("traces-")))


def _metric_reader(exporter: str, trace_file: str) -> MetricReader | None:
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return PeriodicExportingMetricReader(OTLPMetricExporter())
    if exporter == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
    if exporter == "memory":
        return MEMORY_METRICS
    if exporter == "file":
        return PeriodicExportingMetricReader(
            JsonLinesMetricExporter(metrics_file_for(trace_file)), export_interval_millis=60_000
        )
    return None


def setup_tracing(service: str, exporter: str, trace_file: str = "") -> TracerProvider:
    """Install the process's tracer and meter providers once; later calls return the same provider."""
    global _provider, _meter_provider
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
        if exporter == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif exporter == "file":
            provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
        elif exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif exporter == "memory":
            provider.add_span_processor(SimpleSpanProcessor(MEMORY_EXPORTER))
        trace.set_tracer_provider(provider)
        # Without a reader no metric is read: the API's own provider then records nothing, for
        # nothing (the SDK's aggregated every RPC's duration in a histogram that no one read).
        reader = _metric_reader(exporter, trace_file)
        if reader is not None:
            _meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
            metrics.set_meter_provider(_meter_provider)
        _provider = provider
        return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.force_flush()
    if _meter_provider is not None:
        _meter_provider.force_flush()


# --- the metrics every service records (instruments resolve the global meter provider lazily) ---

_meter = metrics.get_meter("giftcoin")
RPC_DURATION = _meter.create_histogram(
    "giftcoin.rpc.server.duration", unit="ms", description="Server-side RPC latency, by method and code"
)
RPC_ERRORS = _meter.create_counter(
    "giftcoin.rpc.server.errors", description="RPCs that ended in an error, by method, code and reason"
)
VALUE_MOVED = _meter.create_counter(
    "giftcoin.value.moved", description="Coins, diamonds and cash moved, by unit and movement kind"
)
OUTCOMES = _meter.create_counter(
    "giftcoin.outcomes", description="Gifts, payouts and store notifications reaching a state, by kind and state"
)
