"""`giftctl trace <gift-id>`: one gift's trace across the services, read back from the span files.

With GIFTCOIN_TRACE_EXPORTER=file each process appends its finished spans to a JSON-lines file
(services/runtime/telemetry.py `span_to_json`); `giftctl up` and `demo` name them
`<data-dir>/traces-<service>.jsonl`. A gift's traces are those with a span carrying the attribute
`giftcoin.gift_id` equal to the gift (transfer) id; every span of such a trace is shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIFT_ATTRIBUTES = ("giftcoin.gift_id", "giftcoin.transfer_id")
_DB_ATTRIBUTE = "db.system"


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def is_database(self) -> bool:
        return _DB_ATTRIBUTE in self.attributes

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind,
            "service": self.service,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_ns": self.duration_ns,
            "status": self.status,
            "attributes": self.attributes,
            "children": [child.to_dict() for child in self.children],
        }


def span_files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("traces-*.jsonl"))


def read_spans(paths: Iterable[Path]) -> list[Span]:
    """Every well-formed span in the files; a line being written right now (cut short) is skipped."""
    spans = []
    for path in paths:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    raw = json.loads(line)
                    spans.append(
                        Span(
                            trace_id=str(raw["trace_id"]),
                            span_id=str(raw["span_id"]),
                            parent_span_id=str(raw.get("parent_span_id") or ""),
                            name=str(raw["name"]),
                            kind=str(raw.get("kind", "")),
                            service=str(raw.get("service", "")),
                            start_ns=int(raw["start_ns"]),
                            end_ns=int(raw["end_ns"]),
                            status=str(raw.get("status", "UNSET")),
                            attributes=dict(raw.get("attributes") or {}),
                        )
                    )
                except (ValueError, KeyError, TypeError):
                    continue
    return spans


def gift_traces(spans: Sequence[Span], gift_id: str) -> list[list[Span]]:
    """The traces (each a list of spans) in which some span names `gift_id`, oldest first."""
    trace_ids = {s.trace_id for s in spans if any(s.attributes.get(key) == gift_id for key in GIFT_ATTRIBUTES)}
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        if span.trace_id in trace_ids:
            by_trace.setdefault(span.trace_id, []).append(span)
    return sorted(by_trace.values(), key=lambda trace: min(s.start_ns for s in trace))


def build_tree(spans: Sequence[Span]) -> list[Span]:
    """Link spans to their parents; spans whose parent is not in the files (a caller that does not
    export its spans) are roots. Children and roots in start order."""
    by_id = {s.span_id: s for s in spans}
    for span in spans:
        span.children = []
    roots = []
    for span in sorted(spans, key=lambda s: (s.start_ns, s.end_ns)):
        parent = by_id.get(span.parent_span_id)
        if parent is None or parent is span:
            roots.append(span)
        else:
            parent.children.append(span)
    return roots


def milliseconds(duration_ns: int) -> str:
    # Integer arithmetic to the microsecond.
    micros = duration_ns // 1_000
    return f"{micros // 1_000}.{micros % 1_000:03d} ms"


def _status(span: Span) -> str:
    if span.status == "ERROR":
        reason = span.attributes.get("giftcoin.error.reason")
        return f"ERROR {reason}" if reason else "ERROR"
    return "ok"


def render_tree(roots: Sequence[Span], brief: bool = False) -> str:
    """One line per span: tree, service, name, duration, status. `brief` folds database spans into a
    count on their parent."""
    rows: list[tuple[str, str, str]] = []

    def visit(span: Span, prefix: str, child_prefix: str) -> None:
        children = [c for c in span.children if not (brief and c.is_database)]
        folded = len(span.children) - len(children)
        label = f"{prefix}{span.service}  {span.name}"
        if folded:
            label += f"  (+{folded} db)"
        rows.append((label, milliseconds(span.duration_ns), _status(span)))
        for index, child in enumerate(children):
            last = index == len(children) - 1
            visit(child, child_prefix + ("└─ " if last else "├─ "), child_prefix + ("   " if last else "│  "))

    for root in roots:
        visit(root, "", "")
    width = max((len(label) for label, _, _ in rows), default=0)
    duration_width = max((len(d) for _, d, _ in rows), default=0)
    return "\n".join(f"{label.ljust(width)}  {d.rjust(duration_width)}  {status}" for label, d, status in rows)


def services_in(spans: Iterable[Span]) -> set[str]:
    return {s.service for s in spans}
