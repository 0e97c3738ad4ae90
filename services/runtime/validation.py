"""Request validation that reports every bad field at once, as google.rpc.BadRequest.

The one validator every servicer uses, so that both databases see the same text: PostgreSQL refuses a
NUL character in a text column and a string longer than its VARCHAR, SQLite stores both, so every
text from a client is checked here, before storage, to be without NUL and within its stated length.
Integers from clients are range-checked against a stated maximum, far inside int64.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime, timedelta

from google.protobuf.message import Message

from services.runtime.errors import FieldViolation, invalid_argument
from services.runtime.timestamps import EPOCH

INT64_MAX = 2**63 - 1
MAX_ID_LENGTH = 128
MAX_IDS = 500  # ids asked for at once by a listing (ListHolds' gift_ids, ...)
MAX_TEXT_LENGTH = 256
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]*")
_COUNTRY = re.compile(r"[A-Z]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
# A request id's one spelling (AIP-155 idempotency keys compare as text): a UUID as str(uuid.UUID)
# writes it, lower-case hex in 8-4-4-4-12 groups. Other spellings of the same UUID (upper case, no
# hyphens, braces, urn:uuid:) are refused rather than normalised, so one UUID is one key, and a
# client learns its bug at once instead of finding two ids that replay each other.
_REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
REQUEST_ID_RULE = "a UUID in canonical form: lower-case hex, hyphenated 8-4-4-4-12 (as str(uuid.uuid4()))"
_MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z


def is_identifier(value: str) -> bool:
    """An id of a user, gift, package or target: 1 to MAX_ID_LENGTH letters, digits and . _ : -, starting
    with a letter or digit."""
    return 0 < len(value) <= MAX_ID_LENGTH and _ID_PATTERN.fullmatch(value) is not None


class Validator:
    """Collects field violations; `check()` raises INVALID_ARGUMENT naming them all."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def check(self) -> None:
        if self.violations:
            raise invalid_argument(self.violations)

    def request_id(self, value: str, field: str = "request_id") -> None:
        if not value:
            self.fail(field, f"required: {REQUEST_ID_RULE}")
        elif not _REQUEST_ID.fullmatch(value):
            self.fail(field, f"must be {REQUEST_ID_RULE}")

    def identifier(self, value: str, field: str, required: bool = True) -> None:
        """Ids of users, gifts, packages, targets: short, printable, no spaces."""
        if not value:
            if required:
                self.fail(field, "required")
            return
        if len(value) > MAX_ID_LENGTH:
            self.fail(field, f"at most {MAX_ID_LENGTH} characters")
        elif not _ID_PATTERN.fullmatch(value):
            self.fail(field, "letters, digits and . _ : - only, starting with a letter or digit")

    def text(self, value: str, field: str, required: bool = True, max_length: int = MAX_TEXT_LENGTH) -> None:
        """Free text (a name, a reference): at most `max_length` characters, no NUL."""
        if not value.strip():
            if required:
                self.fail(field, "required")
            return
        if len(value) > max_length:
            self.fail(field, f"at most {max_length} characters")
        elif "\0" in value:
            self.fail(field, "must not contain NUL characters")

    def positive(self, value: int, field: str, maximum: int | None = None) -> None:
        if value <= 0:
            self.fail(field, "must be positive")
        elif maximum is not None and value > maximum:
            self.fail(field, f"at most {maximum}")

    def non_negative(self, value: int, field: str, maximum: int | None = None) -> None:
        if value < 0:
            self.fail(field, "must not be negative")
        elif maximum is not None and value > maximum:
            self.fail(field, f"at most {maximum}")

    def country(self, value: str, field: str = "country_code") -> None:
        if not _COUNTRY.fullmatch(value):
            self.fail(field, "required: an ISO 3166-1 alpha-2 code such as US")

    def currency(self, value: str, field: str = "currency_code") -> None:
        if not _CURRENCY.fullmatch(value):
            self.fail(field, "an ISO 4217 code such as USD")

    def page_size(self, value: int, field: str = "page_size") -> None:
        if value < 0:
            self.fail(field, "must not be negative")

    def enum(self, value: int, allowed: set[int], field: str) -> None:
        if value not in allowed:
            self.fail(field, "required: one of the enum's defined values other than UNSPECIFIED")

    def calendar_date(self, year: int, month: int, day: int, field: str) -> date | None:
        """A real past date (a date of birth), or None with a violation recorded."""
        try:
            value = date(year, month, day)
        except ValueError:
            self.fail(field, "required: a valid calendar date")
            return None
        if year < 1900 or value > date.today():
            self.fail(field, "must be a past date after 1900")
            return None
        return value

    def timestamp(self, seconds: int, nanos: int, field: str) -> datetime | None:
        """A google.protobuf.Timestamp's (seconds, nanos) as an aware UTC datetime, or None with a
        violation recorded (before 1970 or after 9999, or nanos out of range)."""
        if not 0 <= seconds <= _MAX_TIMESTAMP_SECONDS or not 0 <= nanos < 1_000_000_000:
            self.fail(field, "must be a valid time between 1970 and 9999")
            return None
        return EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)

    def optional_time(self, message: Message, field: str) -> datetime | None:
        """A google.protobuf.Timestamp field, None when unset (or invalid, with a violation recorded)."""
        if not message.HasField(field):
            return None
        stamp = getattr(message, field)
        return self.timestamp(stamp.seconds, stamp.nanos, field)

    def window(
        self, message: Message, start_field: str = "start_time", end_field: str = "end_time"
    ) -> tuple[datetime | None, datetime | None]:
        """A time window [start, end), either bound optional; the end must come after the start."""
        start, end = self.optional_time(message, start_field), self.optional_time(message, end_field)
        if start is not None and end is not None and end <= start:
            self.fail(end_field, f"must be after {start_field}")
        return start, end

    def identifiers(self, values: Sequence[str], field: str, maximum: int = MAX_IDS) -> None:
        """A list of ids, each checked as `identifier`, at most `maximum` of them."""
        if len(values) > maximum:
            self.fail(field, f"at most {maximum} at once")
            return
        for i, value in enumerate(values):
            self.identifier(value, f"{field}[{i}]")

    def selection(self, message: Message, ids_field: str) -> tuple[datetime | None, datetime | None, tuple[str, ...]]:
        """What a listing of records reads: a window of create times (start_time, end_time), or the
        records of given ids (at most MAX_IDS), not both; neither: all of them."""
        start, end = self.window(message)
        ids = tuple(getattr(message, ids_field))
        self.identifiers(ids, ids_field)
        if ids and (message.HasField("start_time") or message.HasField("end_time")):
            self.fail(ids_field, "either ids or a time window (start_time, end_time), not both")
        return start, end, ids

    def summary_window(self, message: Message, max_days: int) -> tuple[datetime, datetime]:
        """A required window [start_time, end_time) of at most `max_days` days (a summary's)."""
        start, end = self.window(message)
        for value, field in ((start, "start_time"), (end, "end_time")):
            if value is None and not message.HasField(field):
                self.fail(field, "required")
        if start is not None and end is not None and end - start > timedelta(days=max_days):
            self.fail("end_time", f"at most {max_days} days after start_time")
        self.check()
        assert start is not None and end is not None
        return start, end


def age_on(born: date, today: date) -> int:
    """Whole years between a birth date and today (a 29 February birthday counts on 1 March)."""
    years = today.year - born.year
    if (today.month, today.day) < (born.month, born.day):
        years -= 1
    return years


def clamp_page_size(value: int, default: int = 50, maximum: int = 500) -> int:
    return default if value <= 0 else min(value, maximum)
