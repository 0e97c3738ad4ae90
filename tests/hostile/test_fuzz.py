"""Property-based fuzzing of every RPC of the three services, its requests built from the descriptors.

For each service, a few hundred requests drawn field by field from the request message's descriptor
(strings hostile and plausible, integers across their whole wire range, open enums, nested messages
and lists), each sent by the caller its RPC is for, to the three services running in this process on
SQLite and on PostgreSQL. Whatever the request: the answer is never INTERNAL or UNKNOWN, an error
always carries an ErrorInfo, and a refused call changes nothing a service keeps (its request-id
record aside, which is how a refusal replays). At the end, value is conserved across the services.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.payout.v1 import payout_pb2
from giftcoin.wallet.v1 import wallet_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, select

from services.gifting import app as gifting_app
from services.gifting import storage as gifting_storage
from services.payout import app as payout_app
from services.payout import storage as payout_storage
from services.runtime.auth import Access, Caller, CallerKind, operator, service, user
from services.runtime.db import Database
from services.runtime.errors import from_rpc_error
from services.runtime.pagination import encode_page_token
from services.wallet import app as wallet_app
from services.wallet import storage as wallet_storage
from services.wallet.receipts import mint_receipt
from tests.gifting.harness import OPERATOR, Suite, ledgers_problems, new_id, start_suite
from tests.support.identity import as_caller

EXAMPLES_PER_RPC = 25  # about 300 per service (11 to 13 RPCs each)
WATCH_SECONDS = 0.2  # a valid WatchGifts streams until its deadline: DEADLINE_EXCEEDED is its answer

# A request is drawn field by field from its descriptor, in one of two ways: every field plausible (what
# it is meant to hold, so the request reaches the rules behind validation), or one field hostile and the
# rest plausible (so the hostile value is what the service must cope with, not a missing request id).
KNOWN_IDS = ["alice", "bob", "carol", "rose", "lion", "coins_70", "coins_700", "welcome", "sandbox", "stream-1"]
HOSTILE_TEXT = ["", " ", "\u0000", "x" * 129, "x" * 257, "y" * 20_000, "é" * 300, "\U0001f339", "' OR 1=1 --", "a b"]
EDGE_INTS = [0, -1, 9999, 10_000, 10**12, 10**12 + 1, 10**15, 10**15 + 1, 2**31 - 1, 2**63 - 1, -(2**63)]
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

# The list each listing request's tokens page, and each list's cursor: its fields and their kinds.
LIST_OF_REQUEST = {
    "ListTransactionsRequest": "transactions",
    "ListDiamondTransactionsRequest": "diamond_transactions",
    "ListPayoutsRequest": "payouts",
    "ListSentGiftsRequest": "sent",
    "ListReceivedGiftsRequest": "received",
}
CURSORS = {
    "transactions": {"before": "position"},
    "diamond_transactions": {"position": "position"},
    "payouts": {"created_at": "instant", "payout_id": "id"},
    "sent": {"at": "instant", "id": "id"},
    "received": {"at": "instant", "id": "id"},
}
CURSOR_VALUES: dict[str, tuple[list[object], list[object]]] = {  # kind: (plausible, hostile)
    "position": ([1, 5, 2**63 - 1], [2**63, 2**64, 0, -1, 1.5, "7", None]),
    "instant": (
        ["2026-12-01T10:00:00+00:00", "1970-01-01T00:00:00+00:00"],
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-12-01T10:00:00", "soon", 0],
    ),
    "id": ([str(uuid.uuid4()), "po_1"], ["x" * 65, "a\u0000", "a b", 3, ""]),
}


def _page_token(list_name: str, hostile: bool) -> st.SearchStrategy[str]:
    """A token of the list's own shape: plausible values (a page past the end is still a page), or one
    value at or past its column's edge, or a token of another list."""
    fields = CURSORS[list_name]

    def cursor(bad: str) -> st.SearchStrategy[dict[str, object]]:
        return st.fixed_dictionaries({k: st.sampled_from(CURSOR_VALUES[kind][k == bad]) for k, kind in fields.items()})

    if not hostile:
        return st.one_of(st.just(""), cursor("").map(lambda c: encode_page_token(list_name, c)))  # type: ignore[arg-type]
    other = st.sampled_from(sorted(set(CURSORS) - {list_name}))
    return st.one_of(
        st.sampled_from(sorted(fields)).flatmap(cursor).map(lambda c: encode_page_token(list_name, c)),  # type: ignore[arg-type]
        other.map(lambda name: encode_page_token(name, {k: 1 for k in CURSORS[name]})),
        st.sampled_from(["%%%", "e30", "W10", "A" * 600]),
    )


def _other_spellings() -> st.SearchStrategy[str]:
    spelled: list[Callable[[uuid.UUID], str]] = [
        lambda u: str(u).upper(),
        lambda u: u.hex,
        lambda u: f"{{{u}}}",
        lambda u: f"urn:uuid:{u}",
        lambda u: f"{u}\n",
    ]
    return st.builds(lambda u, spell: spell(u), st.uuids(), st.sampled_from(spelled))


def _string(field: FieldDescriptor, hostile: bool) -> st.SearchStrategy[str]:
    listing = LIST_OF_REQUEST.get(getattr(field.containing_type, "name", ""), "transactions")
    if field.name == "page_token":
        return _page_token(listing, hostile)
    meant: dict[str, st.SearchStrategy[str]] = {
        "request_id": st.uuids().map(str),
        "payload": st.sampled_from(["coins_70", "coins_700"]).map(mint_receipt),
        "country_code": st.sampled_from(["US", "DE"]),
        "currency_code": st.just("USD"),
        "account_reference": st.sampled_from(["succeed", "fail", "delay:1", "IBAN DE00 1234"]),
    }
    plausible = meant.get(field.name, st.sampled_from(KNOWN_IDS))
    if not hostile:
        return plausible
    spoilt = st.one_of(
        plausible.map(lambda v: v + "\u0000"),
        plausible.map(lambda v: "\u0000" + v),
        plausible.map(lambda v: v + "\n"),
        plausible.map(lambda v: v + "z" * 300),
        plausible.map(str.upper),
    )
    choices = [spoilt, spoilt, st.sampled_from(HOSTILE_TEXT), st.text(max_size=40)]
    if field.name == "request_id":
        choices.append(_other_spellings())
    return st.one_of(choices)


def _value(field: FieldDescriptor, hostile: bool, depth: int) -> st.SearchStrategy[Any]:
    """One value of a (non-repeated) field: plausible, or hostile."""
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string(field, hostile)
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.one_of(st.sampled_from(EDGE_INTS), st.integers(*INT64)) if hostile else st.integers(1, 50)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        edges = [v for v in EDGE_INTS if INT32[0] <= v <= INT32[1]]
        return st.one_of(st.sampled_from(edges), st.integers(*INT32)) if hostile else st.integers(0, 50)
    if t == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: any int32 arrives
        assert field.enum_type is not None
        defined = [v.number for v in field.enum_type.values if v.number]
        return st.integers(*INT32).filter(lambda n: n not in defined) if hostile else st.sampled_from(defined)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return message(field.message_type, depth + 1, faults=1 if hostile else 0)
    raise AssertionError(f"no strategy for {field.full_name} (type {t}): add one")


def _field(field: FieldDescriptor, hostile: bool, depth: int) -> st.SearchStrategy[Any]:
    """A field's value, repeated fields as lists (a hostile list holds one hostile item, or none at all)."""
    if field.is_repeated:
        plausible = st.lists(_value(field, False, depth), min_size=1, max_size=3)
        if not hostile:
            return plausible
        return st.one_of(
            st.just([]),
            st.tuples(plausible, _value(field, True, depth)).map(lambda pair: [*pair[0], pair[1]]),
        )
    return _value(field, hostile, depth)


def message(descriptor: Descriptor, depth: int = 0, faults: int | None = None) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`, built from its descriptor: every field plausible, or one of them hostile
    (`faults`: 0 none, 1 one, None either). A hostile field may also be left unset."""
    cls = GetMessageClass(descriptor)
    fields = list(descriptor.fields)
    if depth > 3 or not fields:
        return st.just(cls())
    if descriptor.full_name == "google.protobuf.Timestamp":
        near_now = st.builds(lambda sec: cls(seconds=sec), st.integers(1_750_000_000, 1_900_000_000))
        anything = st.builds(lambda sec, n: cls(seconds=sec, nanos=n), st.integers(*INT64), st.integers(*INT32))
        return anything if faults else near_now
    if descriptor.full_name == "giftcoin.common.v1.Date":
        born = st.builds(
            lambda y, m, d: cls(year=y, month=m, day=d), st.integers(1950, 2005), st.integers(1, 12), st.integers(1, 28)
        )
        odd = st.builds(lambda y, m, d: cls(year=y, month=m, day=d), *[st.integers(*INT32)] * 3)
        return odd if faults else born

    def build(bad: int) -> st.SearchStrategy[Message]:
        values = {f.name: _field(f, i == bad, depth) for i, f in enumerate(fields)}
        unset = st.just(None)
        if bad >= 0:
            values[fields[bad].name] = st.one_of(values[fields[bad].name], values[fields[bad].name], unset)
        return st.fixed_dictionaries(values).map(lambda v: _build(cls, {k: x for k, x in v.items() if x is not None}))

    choice = {0: st.just(-1), 1: st.integers(0, len(fields) - 1)}.get(faults, st.integers(-1, len(fields) - 1))  # type: ignore[arg-type]
    return choice.flatmap(build)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    built = cls()
    for name, value in values.items():
        target = getattr(built, name, None)
        if isinstance(value, Message):
            target.CopyFrom(value)  # type: ignore[union-attr]
        elif isinstance(value, list):
            if value and isinstance(value[0], Message):
                target.extend(value)  # type: ignore[union-attr]
            else:
                target.extend(value)  # type: ignore[union-attr]
        elif isinstance(value, dict):
            target.update(value)  # type: ignore[union-attr]
        else:
            setattr(built, name, value)
    return built


# --- the services --------------------------------------------------------------------------------

SERVICES: dict[str, tuple[ServiceDescriptor, dict[str, Access], MetaData]] = {
    "wallet": (
        wallet_pb2.DESCRIPTOR.services_by_name["WalletService"],
        dict(wallet_app.ACCESS),
        wallet_storage.metadata,
    ),
    "gifting": (
        gifting_pb2.DESCRIPTOR.services_by_name["GiftingService"],
        dict(gifting_app.ACCESS),
        gifting_storage.metadata,
    ),
    "payout": (
        payout_pb2.DESCRIPTOR.services_by_name["PayoutService"],
        dict(payout_app.ACCESS),
        payout_storage.metadata,
    ),
}


def _caller(access: Access) -> Caller:
    """Someone the RPC is for (its refusals of others are tested elsewhere): rules, not access, are fuzzed."""
    if access.service_name:
        return service(access.service_name)
    if CallerKind.USER in access.kinds:
        return user("alice")
    return operator("ops")


# Rows that say nothing: a sender's day total of 0 coins is what no row says too (recording sends
# creates the row it locks, before deciding whether the send is refused).
_SAYS_NOTHING: dict[str, Callable[[Any], bool]] = {"daily_spending": lambda row: row.coins == 0}


def _state(db: Database, metadata: MetaData) -> dict[str, str]:
    """A digest of each table of what the service keeps, but its request-id records."""
    state = {}
    with db.transaction() as conn:
        for table in metadata.sorted_tables:
            if table.name == "request_ids":
                continue
            says_nothing = _SAYS_NOTHING.get(table.name, lambda _row: False)
            rows = sorted(repr(tuple(r)) for r in conn.execute(select(table)) if not says_nothing(r))
            state[table.name] = hashlib.sha256(repr(rows).encode()).hexdigest()
    return state


def _populate(s: Suite) -> None:
    """People in the suite: alice and bob with coins and creator accounts (alice verified, with a
    destination), carol a creator, a promotion running, and a completed gift."""
    c = s.clients
    for name in ("alice", "bob"):
        c.viewer(name, "coins_7000")
    for name in ("alice", "bob", "carol"):
        c.creator(name)
    verify = payout_pb2.VerifyCreatorRequest(
        request_id=new_id(), creator_id="alice", kyc_status=payout_pb2.KYC_STATUS_VERIFIED
    )
    c.payout.VerifyCreator(verify, metadata=as_caller(OPERATOR))
    destination = payout_pb2.PayoutDestination(
        kind=payout_pb2.DESTINATION_KIND_SANDBOX, account_reference="succeed", currency_code="USD"
    )
    c.payout.SetPayoutDestination(
        payout_pb2.SetPayoutDestinationRequest(request_id=new_id(), destination=destination),
        metadata=as_caller(user("alice")),
    )
    promotion = wallet_pb2.CreatePromotionRequest(
        request_id=new_id(), promotion_id="welcome", name="Welcome", coins_per_claim=100, budget=10_000
    )
    promotion.start_time.FromDatetime(s.clock.now())
    promotion.end_time.FromSeconds(promotion.start_time.seconds + 86_400)
    c.wallet.CreatePromotion(promotion, metadata=as_caller(OPERATOR))
    c.send("bob", gift_id="money_gun", quantity=10, recipient_id="alice")


def _call(s: Suite, service_name: str, method: str, request: Message, caller: Caller) -> grpc.RpcError | None:
    stub: Any = {"wallet": s.clients.wallet, "gifting": s.clients.gifting, "payout": s.clients.payout}[service_name]
    try:
        if method == "WatchGifts":
            for _ in stub.WatchGifts(request, metadata=as_caller(caller), timeout=WATCH_SECONDS):
                break
        else:
            getattr(stub, method)(request, metadata=as_caller(caller), timeout=30)
    except grpc.RpcError as err:
        return err
    return None


@pytest.mark.parametrize("service_name", sorted(SERVICES))
def test_no_request_makes_a_service_fail_or_a_refusal_change_anything(
    service_name: str, make_database: Callable[[str], str]
) -> None:
    descriptor, access, _ = SERVICES[service_name]
    assert set(descriptor.methods_by_name) == set(access), "every RPC has an access policy, and is fuzzed"
    suite = start_suite(make_database)
    url = {"wallet": suite.wallet_url, "gifting": suite.gifting_url, "payout": suite.payout_url}[service_name]
    db = Database.from_url(url, pool_size=1)
    try:
        _populate(suite)
        for method in sorted(descriptor.methods_by_name):
            _fuzz(suite, db, service_name, method)
        if service_name == "gifting":  # gifts moved value through the saga: conserved across the services
            assert suite.problems() == []
        else:  # holds and credits made directly, for no gift of gifting's: each ledger still sound
            assert ledgers_problems(suite.wallet_url, suite.payout_url) == []
    finally:
        db.dispose()
        suite.close()


def _fuzz(suite: Suite, db: Database, service_name: str, method: str) -> None:
    descriptor, access, metadata = SERVICES[service_name]
    caller = _caller(access[method])

    @settings(
        max_examples=EXAMPLES_PER_RPC,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(message(descriptor.methods_by_name[method].input_type))
    def one_call(request: Message) -> None:
        before = _state(db, metadata)
        err = _call(suite, service_name, method, request, caller)
        if err is None:
            return
        code = err.code()
        if method == "WatchGifts" and code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return  # a valid subscription, streaming until the test's deadline
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, request, err.details())
        assert from_rpc_error(err) is not None, f"{method}: {code.name} without ErrorInfo: {err.details()}"
        after = _state(db, metadata)
        changed = sorted(name for name in after if after[name] != before[name])
        assert not changed, f"{method} refused ({code.name}) but changed {changed}: {request}"

    one_call()
