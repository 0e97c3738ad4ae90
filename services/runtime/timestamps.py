"""google.protobuf.Timestamp to and from an aware UTC datetime, in integer arithmetic.

protobuf's own FromDatetime and ToDatetime are Python code that goes through time tuples; these are a
few operations in C, and every gift's RPCs convert about a dozen timestamps. Datetimes carry
microseconds, so a timestamp's nanoseconds are a multiple of 1000 here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(moment: datetime) -> Timestamp:
    """An aware datetime as a Timestamp (a naive one raises TypeError: giftcoin keeps no naive times)."""
    delta = moment - EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def from_timestamp(stamp: Timestamp) -> datetime:
    """A Timestamp as an aware UTC datetime (nanoseconds below a microsecond dropped)."""
    return EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
