"""A gift's own trace, carried through the saga: a step's span in the first gift's trace linked to the
others', log lines in the gift's trace, and the trace context recorded with the gift for recovery."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from services.gifting.model import SendAsk, TransferRecord
from services.runtime.telemetry import SAGA_STEP_DURATION


def current_trace_context() -> str:
    """The current W3C trace context (traceparent, tracestate) as JSON, for recovery to continue."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=otel_context.get_current())
    return json.dumps(carrier, sort_keys=True)


@contextmanager
def batch_span(tracer: trace.Tracer, step: str, gifts: Sequence[TransferRecord | SendAsk]) -> Iterator[None]:
    """A step's span, in the first gift's trace, linked to the traces of the others."""
    if not gifts:
        yield
        return
    parent = propagate.extract(json.loads(gifts[0].trace_context or "{}"))
    attributes: dict[str, str | int] = {"giftcoin.step": step, "giftcoin.gifts": len(gifts)}
    if isinstance(gifts[0], TransferRecord):
        attributes["giftcoin.gift_id"] = gifts[0].transfer_id
    with (
        _timed(step),
        tracer.start_as_current_span(f"gifting.saga.{step}", context=parent, attributes=attributes) as span,
    ):
        if span.is_recording():  # links cost a parse per gift: only when spans are kept
            for gift in gifts[1:]:
                linked = trace.get_current_span(propagate.extract(json.loads(gift.trace_context or "{}")))
                link = {"giftcoin.gift_id": gift.transfer_id} if isinstance(gift, TransferRecord) else None
                span.add_link(linked.get_span_context(), link)
        yield


@contextmanager
def _timed(step: str) -> Iterator[None]:
    """A saga step's duration (giftcoin.gifting.saga.step.duration), however it ends."""
    started = time.perf_counter()
    try:
        yield
    finally:
        SAGA_STEP_DURATION.record(time.perf_counter() - started, {"giftcoin.saga.step": step})


@contextmanager
def in_trace(gift: TransferRecord) -> Iterator[None]:
    """The gift's own trace made current, so that a log line about it carries its trace id wherever
    the saga stands (its step's span may have ended, or belong to another gift of the batch)."""
    token = otel_context.attach(propagate.extract(json.loads(gift.trace_context or "{}")))
    try:
        yield
    finally:
        otel_context.detach(token)
