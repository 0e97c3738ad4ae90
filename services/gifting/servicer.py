"""GiftingService over gRPC: validates requests, calls the domain, turns its results into protobuf.

Who may call what is the ACCESS table in app.py; user RPCs act only for the caller. Every mutating
RPC runs through the request-id store (AIP-155), by `self.calls`. SendGift records the gift under the
request id (the store replays that record, or the refusal), then drives the saga: a replay therefore
answers with the gift as it stands now — completed, failed (the same error again), or still being sent.

SendGift calls that arrive together are served together: each is queued on a `Batcher`, whose batch
goes to `Sends.send` (sends.py: recorded in one transaction, each under its own request id, then
driven together by the saga). SendGift and WatchGifts are coroutines (they wait for a batch, for the
next gift); the other RPCs do database work only, on its threads.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc
from google.protobuf.message import Message

from services.gifting.domain import Gifts, SendReads, UnitOfWork, failure
from services.gifting.feed import LiveFeed
from services.gifting.model import (
    ACTIVE,
    COMPLETED,
    CREDITED,
    CREDITING,
    FAILED,
    FAILING,
    HELD,
    MAX_COIN_PRICE,
    MAX_QUANTITY,
    PENDING,
    RECORDED,
    RETIRED,
    FeedEventRecord,
    Gift,
    LeaderboardEntry,
    Send,
    SendAsk,
    Target,
    TransferRecord,
)
from services.gifting.sends import RecordWork, Sends
from services.gifting.traces import current_trace_context
from services.runtime.audit import AuditLog
from services.runtime.auth import calling_user_id
from services.runtime.batching import Batcher
from services.runtime.errors import DomainError, aborted
from services.runtime.guarded import GuardedCalls
from services.runtime.idempotency import BatchItem
from services.runtime.pagination import Listing
from services.runtime.timestamps import to_timestamp
from services.runtime.validation import Validator, clamp_page_size

log = logging.getLogger(__name__)

FULL_NAME = gifting_pb2.DESCRIPTOR.services_by_name["GiftingService"].full_name
MAX_GIFT_NAME_LENGTH = 64
DEFAULT_LEADERBOARD_SIZE, MAX_LEADERBOARD_SIZE = 10, 100

_TARGET_KINDS = {gifting_pb2.TARGET_KIND_LIVE_STREAM: "live_stream", gifting_pb2.TARGET_KIND_VIDEO: "video"}
_TARGET_KINDS_PB = {v: k for k, v in _TARGET_KINDS.items()}
_WINDOWS = {
    gifting_pb2.LEADERBOARD_WINDOW_TARGET: "target",
    gifting_pb2.LEADERBOARD_WINDOW_DAY: "day",
    gifting_pb2.LEADERBOARD_WINDOW_ALL_TIME: "all_time",
}
_GIFT_STATES_PB = {ACTIVE: gifting_pb2.GIFT_STATE_ACTIVE, RETIRED: gifting_pb2.GIFT_STATE_RETIRED}
_TRANSFER_STATES_PB = {
    PENDING: gifting_pb2.GIFT_TRANSFER_STATE_PENDING,
    COMPLETED: gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED,
    FAILED: gifting_pb2.GIFT_TRANSFER_STATE_FAILED,
}
_TRANSFER_STATES = {v: k for k, v in _TRANSFER_STATES_PB.items()}
_STEPS_PB = {
    RECORDED: gifting_pb2.GIFT_TRANSFER_STEP_RECORDED,
    HELD: gifting_pb2.GIFT_TRANSFER_STEP_HELD,
    CREDITING: gifting_pb2.GIFT_TRANSFER_STEP_CREDITING,
    CREDITED: gifting_pb2.GIFT_TRANSFER_STEP_CREDITED,
    FAILING: gifting_pb2.GIFT_TRANSFER_STEP_FAILING,
    COMPLETED: gifting_pb2.GIFT_TRANSFER_STEP_COMPLETED,
    FAILED: gifting_pb2.GIFT_TRANSFER_STEP_FAILED,
}
_STEPS = {v: k for k, v in _STEPS_PB.items()}


# A time_remaining() beyond this means the call has no deadline (waiting that long overflows).
_NO_DEADLINE = 10**6
MAX_EVENTS_PER_RESPONSE = 500


@dataclass(frozen=True)
class _QueuedSend:
    item: BatchItem  # the request as the request-id store sees it
    ask: SendAsk


class GiftingServicer(gifting_pb2_grpc.GiftingServiceServicer):
    def __init__(
        self,
        gifts: Gifts,
        sends: Sends,
        feed: LiveFeed,
        calls: GuardedCalls[UnitOfWork],
        audit: AuditLog,
        send_batch_max: int = 64,
        send_batch_stall_seconds: float = 0.25,
    ) -> None:
        self.gifts = gifts
        self.sends = sends
        self.feed = feed
        self.calls = calls
        self.audit = audit  # read by ListAuditRecords; calls write it
        self.batcher: Batcher[_QueuedSend, gifting_pb2.SendGiftResponse] = Batcher(
            "gifting-send", self._send_batch, max_batch=send_batch_max, stall_seconds=send_batch_stall_seconds
        )

    async def close(self) -> None:
        """After the server has drained: the batches queued and in flight finish (none, by then)."""
        await self.batcher.close()

    # --- catalogue -------------------------------------------------------------------------------

    def ListGifts(
        self, request: gifting_pb2.ListGiftsRequest, context: grpc.ServicerContext
    ) -> gifting_pb2.ListGiftsResponse:
        return gifting_pb2.ListGiftsResponse(gifts=[_gift(g) for g in self.calls.read(self.gifts.list_gifts)])

    def UpsertGift(
        self, request: gifting_pb2.UpsertGiftRequest, context: grpc.ServicerContext
    ) -> gifting_pb2.UpsertGiftResponse:
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.gift_id, "gift_id")
        v.text(request.name, "name", max_length=MAX_GIFT_NAME_LENGTH)
        v.positive(request.coin_price, "coin_price", maximum=MAX_COIN_PRICE)
        if request.diamonds < 0:
            v.fail("diamonds", "must not be negative (0 means the default share of coin_price)")
        elif request.diamonds > max(request.coin_price, 0):
            v.fail("diamonds", "at most coin_price: a gift never pays out more than it costs")
        v.check()
        name = request.name.strip()
        return self.calls.once(
            "UpsertGift",
            request,
            gifting_pb2.UpsertGiftResponse,
            lambda uow: gifting_pb2.UpsertGiftResponse(
                gift=_gift(self.gifts.upsert_gift(uow, request.gift_id, name, request.coin_price, request.diamonds))
            ),
            audit_target=request.gift_id,
        )

    def RetireGift(
        self, request: gifting_pb2.RetireGiftRequest, context: grpc.ServicerContext
    ) -> gifting_pb2.RetireGiftResponse:
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.gift_id, "gift_id")
        v.check()
        return self.calls.once(
            "RetireGift",
            request,
            gifting_pb2.RetireGiftResponse,
            lambda uow: gifting_pb2.RetireGiftResponse(gift=_gift(self.gifts.retire_gift(uow, request.gift_id))),
            audit_target=request.gift_id,
        )

    # --- sending -----------------------------------------------------------------------------------

    async def SendGift(
        self, request: gifting_pb2.SendGiftRequest, context: grpc.aio.ServicerContext
    ) -> gifting_pb2.SendGiftResponse:
        sender_id = calling_user_id()
        v = Validator()
        v.request_id(request.request_id)
        v.identifier(request.gift_id, "gift_id")
        v.positive(request.quantity, "quantity", maximum=MAX_QUANTITY)
        v.identifier(request.recipient_id, "recipient_id")
        target = _target(v, request, "target")
        v.check()
        assert target is not None
        send = Send(request.gift_id, request.quantity, request.recipient_id, target)
        item = self.calls.item("SendGift", request)
        ask = SendAsk(sender_id, request.request_id, item.fingerprint, send, current_trace_context())
        remaining = context.time_remaining()  # without a deadline: a huge number, or None
        try:
            return await self.batcher.submit(
                _QueuedSend(item, ask),
                timeout=remaining if remaining is not None and remaining < _NO_DEADLINE else None,
            )
        except TimeoutError:  # the caller's deadline: the gift goes on, and a retry finds it
            raise aborted(
                "REQUEST_IN_FLIGHT",
                f"request {request.request_id} is still being sent; retry with the same request id",
                request_id=request.request_id,
            ) from None

    async def _send_batch(
        self, queued: Sequence[_QueuedSend], make_way: Callable[[], None]
    ) -> list[gifting_pb2.SendGiftResponse | DomainError]:
        """The batcher's sends, sent together (sends.py); each answered with its gift or its refusal."""
        items = [q.item for q in queued]

        async def record(work: RecordWork, read: Callable[[UnitOfWork], SendReads]) -> list[str | DomainError]:
            def answers(
                uow: UnitOfWork, new: list[int], reads: SendReads
            ) -> list[gifting_pb2.SendGiftResponse | DomainError]:
                # The request id records which transfer it made; every answer reads it as it stands.
                return [o if isinstance(o, DomainError) else _made(o.transfer_id) for o in work(uow, new, reads)]

            responses = await self.calls.transactions.call_async(
                lambda: self.calls.batch(items, gifting_pb2.SendGiftResponse, answers, read)
            )
            return [r if isinstance(r, DomainError) else r.transfer.transfer_id for r in responses]

        outcomes = await self.sends.send([q.ask for q in queued], record, make_way)
        return [
            o if isinstance(o, DomainError) else gifting_pb2.SendGiftResponse(transfer=_transfer(o)) for o in outcomes
        ]

    # --- reads ---------------------------------------------------------------------------------------

    def GetGiftTransfer(
        self, request: gifting_pb2.GetGiftTransferRequest, context: grpc.ServicerContext
    ) -> gifting_pb2.GetGiftTransferResponse:
        user_id = calling_user_id()
        v = Validator()
        v.identifier(request.transfer_id, "transfer_id")
        v.check()
        return gifting_pb2.GetGiftTransferResponse(
            transfer=_transfer(self.calls.read(lambda uow: self.gifts.get_transfer(uow, user_id, request.transfer_id)))
        )

    def ListSentGifts(
        self, request: gifting_pb2.ListSentGiftsRequest, context: grpc.ServicerContext
    ) -> gifting_pb2.ListSentGiftsResponse:
        user_id = calling_user_id()
        v = Validator()
        v.page_size(request.page_size)
        v.check()
        size = clamp_page_size(request.page_size)
        page = self.calls.read(lambda uow: self.gifts.list_sent(uow, user_id, size, request.page_token))
        return gifting_pb2.ListSentGiftsResponse(
            transfers=[_transfer(t) for t in page.transfers], next_page_token=page.next_page_token
        )

    def ListReceivedGifts(
        self, request: gifting_pb2.ListReceivedGiftsRequest, context: grpc.ServicerContext
    ) -> gifting_pb2.ListReceivedGiftsResponse:
        user_id = calling_user_id()
        v = Validator()
        v.page_size(request.page_size)
        v.check()
        size = clamp_page_size(request.page_size)
        page = self.calls.read(lambda uow: self.gifts.list_received(uow, user_id, size, request.page_token))
        return gifting_pb2.ListReceivedGiftsResponse(
            transfers=[_transfer(t) for t in page.transfers], next_page_token=page.next_page_token
        )

    async def WatchGifts(  # type: ignore[override]  # responses encoded once, shared by many viewers
        self, request: gifting_pb2.WatchGiftsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        v = Validator()
        target = _target(v, request, "target")
        v.non_negative(request.after_sequence, "after_sequence")
        if request.from_start and request.after_sequence:
            v.fail("from_start", "from_start reads from the first event: after_sequence must be 0")
        if not 0 <= request.max_events_per_response <= MAX_EVENTS_PER_RESPONSE:
            v.fail("max_events_per_response", f"0 to {MAX_EVENTS_PER_RESPONSE}")
        v.check()
        assert target is not None

        async def live() -> None:
            # The response headers go out once the viewer is in place, so a client that waits for them
            # (call.initial_metadata()) knows that every gift completed from then on will reach it.
            await context.send_initial_metadata(())

        after = 0 if request.from_start else (request.after_sequence or None)
        async for response in self.feed.watch(target, after, request.max_events_per_response, _feed_responses, live):
            yield response

    def GetLeaderboard(
        self, request: gifting_pb2.GetLeaderboardRequest, context: grpc.ServicerContext
    ) -> gifting_pb2.GetLeaderboardResponse:
        v = Validator()
        has_target, has_creator = request.HasField("target"), bool(request.creator_id)
        target = None
        if has_target == has_creator:
            v.fail("target", "exactly one of target and creator_id is required")
        elif has_target:
            target = _target(v, request, "target")
        else:
            v.identifier(request.creator_id, "creator_id")
        v.enum(request.window, set(_WINDOWS), "window")
        if request.window == gifting_pb2.LEADERBOARD_WINDOW_TARGET and has_creator:
            v.fail("window", "LEADERBOARD_WINDOW_TARGET covers a target: use DAY or ALL_TIME for a creator")
        v.non_negative(request.limit, "limit")
        v.check()
        limit = min(request.limit or DEFAULT_LEADERBOARD_SIZE, MAX_LEADERBOARD_SIZE)
        window, creator_id = _WINDOWS[request.window], request.creator_id or None
        entries = self.calls.read(lambda uow: self.gifts.leaderboard(uow, window, limit, target, creator_id))
        return gifting_pb2.GetLeaderboardResponse(entries=[_entry(e) for e in entries])

    # --- operators and the reconciler ----------------------------------------------------------------

    def ListGiftTransfers(
        self, request: gifting_pb2.ListGiftTransfersRequest, context: grpc.ServicerContext
    ) -> gifting_pb2.ListGiftTransfersResponse:
        v = Validator()
        for i, state in enumerate(request.states):
            v.enum(state, set(_TRANSFER_STATES), f"states[{i}]")
        for i, step in enumerate(request.steps):
            v.enum(step, set(_STEPS), f"steps[{i}]")
        kinds = (sorted(set(request.states)), sorted(set(request.steps)))
        listing = Listing("gift_transfers", request, "transfer_ids", v, *kinds)
        states = tuple(sorted({_TRANSFER_STATES[s] for s in request.states}))
        steps = tuple(sorted({_STEPS[s] for s in request.steps}))
        page, more = self.calls.read(lambda uow: self.gifts.transfers(uow, states, steps, listing))
        token = listing.next_token(more, page[-1].created_at, page[-1].transfer_id) if page else ""
        return gifting_pb2.ListGiftTransfersResponse(
            transfers=[_transfer_record(t) for t in page], next_page_token=token
        )

    def ListAuditRecords(
        self, request: gifting_pb2.ListAuditRecordsRequest, context: grpc.ServicerContext
    ) -> gifting_pb2.ListAuditRecordsResponse:
        records, token = self.audit.page(request.page_size, request.page_token)
        return gifting_pb2.ListAuditRecordsResponse(records=records, next_page_token=token)


def _feed_responses(events: Sequence[FeedEventRecord], per_response: int) -> list[bytes]:
    """A feed's events as the responses a viewer asked for: one event each, or up to `per_response`."""
    if per_response <= 1:
        return [
            gifting_pb2.WatchGiftsResponse(
                sequence=e.sequence, transfer=_transfer(e.transfer), combo_count=e.combo_count
            ).SerializeToString()
            for e in events
        ]
    return [
        gifting_pb2.WatchGiftsResponse(
            events=[_event(e) for e in events[start : start + per_response]]
        ).SerializeToString()
        for start in range(0, len(events), per_response)
    ]


def _event(e: FeedEventRecord) -> gifting_pb2.GiftEvent:
    t = e.transfer
    event = gifting_pb2.GiftEvent(
        sequence=e.sequence,
        transfer_id=t.transfer_id,
        sender_id=t.sender_id,
        gift_id=t.gift_id,
        quantity=t.quantity,
        combo_count=e.combo_count,
    )
    if t.completed_at is not None:
        event.complete_time.CopyFrom(to_timestamp(t.completed_at))
    return event


def _made(transfer_id: str) -> gifting_pb2.SendGiftResponse:
    """What a SendGift's request id records: the transfer it made."""
    return gifting_pb2.SendGiftResponse(transfer=gifting_pb2.GiftTransfer(transfer_id=transfer_id))


def _target(v: Validator, request: Message, field: str) -> Target | None:
    if not request.HasField(field):
        v.fail(field, "required: a live stream or a video")
        return None
    target: gifting_pb2.Target = getattr(request, field)
    v.enum(target.kind, set(_TARGET_KINDS), f"{field}.kind")
    v.identifier(target.id, f"{field}.id")
    if target.kind not in _TARGET_KINDS:
        return None
    return Target(_TARGET_KINDS[target.kind], target.id)


def _gift(g: Gift) -> gifting_pb2.Gift:
    return gifting_pb2.Gift(
        gift_id=g.gift_id,
        name=g.name,
        coin_price=g.coin_price,
        diamonds=g.diamonds,
        version=g.version,
        state=_GIFT_STATES_PB[g.state],
        diamond_share_bps=g.share_bps,
    )


def _transfer(t: TransferRecord) -> gifting_pb2.GiftTransfer:
    transfer = gifting_pb2.GiftTransfer(
        transfer_id=t.transfer_id,
        sender_id=t.sender_id,
        recipient_id=t.recipient_id,
        target=gifting_pb2.Target(kind=_TARGET_KINDS_PB[t.target_kind], id=t.target_id),
        gift_id=t.gift_id,
        gift_version=t.gift_version,
        gift_name=t.gift_name,
        quantity=t.quantity,
        unit_coin_price=t.unit_coin_price,
        total_coins=t.total_coins,
        total_diamonds=t.total_diamonds,
        state=_TRANSFER_STATES_PB[t.state],
        failure_reason=t.failure_reason if t.state == FAILED else "",
        create_time=to_timestamp(t.created_at),
    )
    if t.completed_at is not None:
        transfer.complete_time.CopyFrom(to_timestamp(t.completed_at))
    return transfer


def _transfer_record(t: TransferRecord) -> gifting_pb2.GiftTransferRecord:
    record = gifting_pb2.GiftTransferRecord(
        transfer=_transfer(t),
        step=_STEPS_PB[t.step],
        cause=t.failure_reason,
        cause_message=failure(t).message if t.failure_error else "",
        promotional_coins=t.promotional_coins or 0,
        attempts=t.attempts,
        update_time=to_timestamp(t.updated_at),
    )
    if t.credit_deadline is not None:
        record.credit_deadline.CopyFrom(to_timestamp(t.credit_deadline))
    return record


def _entry(e: LeaderboardEntry) -> gifting_pb2.LeaderboardEntry:
    return gifting_pb2.LeaderboardEntry(rank=e.rank, user_id=e.user_id, coins=e.coins, gifts=e.gifts)
