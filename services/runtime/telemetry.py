"""OpenTelemetry set-up: traces for every service, exporters chosen by configuration.

`GIFTCOIN_TRACE_EXPORTER`: none (default), console, file (one JSON span per line in
GIFTCOIN_TRACE_FILE), otlp (OTEL_EXPORTER_OTLP_ENDPOINT, gRPC), memory (tests).
The service name comes from OTEL_SERVICE_NAME when set, else `giftcoin-<service>`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
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

log = logging.getLogger(__name__)
_lock = threading.Lock()
_provider: TracerProvider | None = None


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
            "attributes": {
                k: v if isinstance(v, str | int | bool) else str(v) for k, v in (span.attributes or {}).items()
            },
            "links": [f"{link.context.trace_id:032x}:{link.context.span_id:016x}" for link in span.links],
        },
        sort_keys=True,
    )


def setup_tracing(service: str, exporter: str, trace_file: str = "") -> TracerProvider:
    """Install the process's tracer provider once; later calls return the same provider."""
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        name = os.environ.get("OTEL_SERVICE_NAME") or f"giftcoin-{service}"
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        if exporter == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif exporter == "file":
            provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
        elif exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif exporter == "memory":
            provider.add_span_processor(SimpleSpanProcessor(MEMORY_EXPORTER))
        elif exporter != "none":
            raise ValueError(f"GIFTCOIN_TRACE_EXPORTER must be none, console, file, otlp or memory, not {exporter!r}")
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider


# Tests that run services in-process read spans from here (GIFTCOIN_TRACE_EXPORTER=memory).
MEMORY_EXPORTER = InMemorySpanExporter()


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.force_flush()
