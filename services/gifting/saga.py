"""The send saga (SPEC §4): the one state machine that moves a gift's value, for one gift or many.

Persisted on the transfer row, so that any replica can resume it:

    recorded -> completed                      hold, credit (before the gift's credit deadline), capture
    recorded -> failed                         wallet refused the hold: nothing held
    recorded -> failing -> failed              payout credited nothing (it refused the recipient, or the
                                               credit deadline had passed): the hold released

`Saga.drive` takes gifts leased to one owner, wherever each stands, and moves them on together: one
batch call per step for all the gifts at that step (BatchHoldCoins, BatchCreditDiamonds,
BatchCaptureHolds; releases, which are rare, one call each, side by side), one transaction to
complete them. A gift sent alone, the gifts of a SendGift batch (sends.py), a client's retry and
recovery all run this same code: a gift alone is a batch of one.

Every step is an idempotent RPC keyed by the transfer id, with a request id derived from it (ports.py:
the peers' ports and the steps' request ids), so a retried step never moves value twice, and nothing
is written between the record and the outcome: a gift found at `recorded` (after a crash, an outage, a
lost lease) is driven again from the start, each step answered again by its peer as it first answered
it (a replay), or done now.

A peer that does not answer costs the gifts that need it one step deadline, retries included
(`SagaPolicy.step_deadline_seconds`); they are then postponed (PENDING, left to recovery) while the
others go on. Calls are awaited on the event loop: a gift waiting on a peer holds no thread.

The expiring hold. Once diamonds are credited the gift must complete, so no credit may land that its
hold might not back: every credit carries the gift's credit deadline (recorded with the gift: the
hold's life less the safety margin), and payout refuses a credit asked after it (CREDIT_DEADLINE_PASSED)
unless the gift was credited already. That refusal is recorded under the credit's request id and
re-decided the same way for any late copy, so once the deadline has passed, asking payout again tells
for certain whether the gift was credited: a gift whose credit got no answer (payout down, a crash)
is never stuck between the two. A hold made when the gift was recorded outlives the deadline by the
margin; and once credited, a gift only moves forward: the capture is asked until it succeeds. While
the hold lasts, a gift is never put off past it (`retry_delay`: at most half its remaining life, and
asked again a step deadline before it lapses), so a wallet outage shorter than the hold's life ends in
a capture of the hold itself; after a longer one wallet captures the lapsed hold from the balance.

Rows written by earlier versions may stand at the steps those wrote: `held` (driven as `recorded`),
and `crediting` / `credited` (credited without a deadline: its credit is asked again as it was, then
captured).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from opentelemetry import trace

from services.gifting.domain import (
    UnitOfWork,
    failure,
    gift_failed,
    not_credited,
    with_transfer,
)
from services.gifting.model import (
    COMPLETED,
    CREDITED,
    CREDITING,
    FAILED,
    FAILING,
    HELD,
    PENDING,
    RECORDED,
    SagaPolicy,
    SendAsk,
    TransferRecord,
    credit_deadline,
)
from services.gifting.ports import (
    NO_FAILPOINT,
    NOT_CREDITED,
    NOTHING_HELD,
    CaptureOrder,
    CreditOrder,
    Hold,
    HoldOrder,
    PayoutPort,
    Refused,
    ReleaseOrder,
    StepUncertain,
    WalletPort,
    captured,
    new_lease_owner,
    step_request_id,
)
from services.gifting.traces import batch_span, in_trace
from services.runtime.clock import Clock
from services.runtime.errors import DomainError
from services.runtime.guarded import Transactions
from services.runtime.telemetry import COINS_MOVED, DIAMONDS_MOVED, GIFT_OUTCOMES, traced

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
T = TypeVar("T")
A = TypeVar("A")


# --- the saga ------------------------------------------------------------------------------------------


class _Drive:
    """One drive's bookkeeping: where each gift stands when the drive is over."""

    def __init__(self) -> None:
        self.ended: dict[str, TransferRecord] = {}  # as the drive left it (completed, failed, postponed)
        self.elsewhere: set[str] = set()  # its lease was lost: read back as it stands


class Saga:
    """Drives gifts through the saga over the gifting database's transactions and the two peers."""

    def __init__(
        self,
        transactions: Transactions[UnitOfWork],
        clock: Clock,
        wallet: WalletPort,
        payout: PayoutPort,
        policy: SagaPolicy,
        failpoint: Callable[[str], None] = NO_FAILPOINT,
        on_completed: Callable[[str], None] = lambda _target_key: None,
        tracer: trace.Tracer = tracer,
    ) -> None:
        self.transactions = transactions
        self.clock = clock
        self.wallet = wallet
        self.payout = payout
        self.policy = policy
        self.failpoint = failpoint
        self.on_completed = on_completed
        self.tracer = tracer  # tests may give one of their own provider

    async def _db(self, work: Callable[[UnitOfWork], T]) -> T:
        return await self.transactions.run_async(work)

    @contextmanager
    def batch_span(self, step: str, gifts: Sequence[TransferRecord | SendAsk]) -> Iterator[None]:
        """A step's span, in the first gift's trace, linked to the traces of the others."""
        with batch_span(self.tracer, step, gifts):
            yield

    # --- entry points ----------------------------------------------------------------------------------

    async def recover_once(self) -> int:
        """Drive every unfinished gift no one is driving to COMPLETED or FAILED; returns how many ended.

        The gifts are taken with a lease first, so replicas running this at once never drive one gift
        together; a gift whose peer still does not answer is put back with a growing delay.
        """
        now = self.clock.now()
        ids = await self._db(lambda uow: uow.transfers.unfinished(now, self.policy.recovery_batch))
        if not ids:
            return 0
        owner = new_lease_owner()
        until = now + timedelta(seconds=self.policy.lease_seconds)

        def claim(uow: UnitOfWork) -> list[TransferRecord]:
            claimed = [tid for tid in ids if uow.transfers.claim(tid, owner, now, until, take_idle=False)]
            return [t for tid in claimed if (t := uow.transfers.get(tid)) is not None]

        # The recovery loop looks for work untraced; what it found, it traces: each gift's trace goes on
        # (the recovery's span is in the first one's, linked to the others').
        with traced():
            taken = await self._db(claim)
            with self.batch_span("recover", taken):
                outcomes = await self.drive(taken, owner)
        return sum(t.state != PENDING for t in outcomes.values())

    async def drive(
        self, ts: Sequence[TransferRecord], owner: str, make_way: Callable[[], None] = lambda: None
    ) -> dict[str, TransferRecord]:
        """Drive gifts leased to `owner` as far as they go now, each from the step it stands at;
        each as it stands after, by transfer id: COMPLETED, FAILED, or PENDING (postponed: recovery
        finishes it; or driven by another replica that took it over). `make_way` is called once the
        credits are answered: what is left (captures, completions) may go beside the next batch."""
        drive = _Drive()
        holding = [t for t in ts if t.step in (RECORDED, HELD)]
        crediting = [t for t in ts if t.step == CREDITING]
        capturing = [t for t in ts if t.step == CREDITED]
        releasing = [t for t in ts if t.step == FAILING]

        with self.batch_span("hold", holding):
            holds: list[tuple[TransferRecord, Hold | Refused]] = await self._ask(drive, holding, owner, self._hold_many)
        if holds:
            self.failpoint("after_hold")
        for t, hold in holds:
            if isinstance(hold, Refused):  # no hold was made: nothing to give back
                await self._finish_failed(drive, t, owner, with_transfer(hold.error, t.transfer_id))
            elif hold.state == "released":  # given back already: this gift cannot be credited any more
                failing = await self._start_failing(
                    drive, t, owner, gift_failed(t, "HOLD_LAPSED", "its hold was released")
                )
                releasing += failing
            else:
                # As its hold left it: how many of its coins are promotional, when the hold lapses.
                crediting.append(replace(t, promotional_coins=hold.promotional_amount, hold_expire_at=hold.expire_time))

        with self.batch_span("credit", crediting):
            credits = await self._ask(drive, crediting, owner, self._credit_many)
        if credits:
            self.failpoint("after_credit")
        make_way()
        for t, credit in credits:
            if credit is None:
                capturing.append(t)
            elif credit.error.reason in NOT_CREDITED:
                releasing += await self._start_failing(drive, t, owner, not_credited(credit.error, t))
            else:
                with in_trace(t):
                    log.error("gift %s: payout refused the credit unexpectedly: %s", t.transfer_id, credit)
                await self._postpone(drive, [t], owner, str(credit))

        with self.batch_span("capture", capturing):
            captures: list[tuple[TransferRecord, Hold | Refused]] = await self._ask(
                drive, capturing, owner, self._capture_many
            )
        if captures:
            self.failpoint("after_capture")
        completing = []
        for t, capture in captures:
            if captured(capture):
                completing.append(t)
            else:  # diamonds were credited: this gift may only complete. Keep trying, loudly.
                with in_trace(t):
                    log.error("gift %s: wallet refused to capture a credited gift: %s", t.transfer_id, capture)
                await self._postpone(drive, [t], owner, str(capture))
        await self._complete_many(drive, completing, owner)

        if releasing:
            with self.batch_span("release", releasing):
                await asyncio.gather(*(self._release(drive, t, owner) for t in releasing))

        return await self._as_they_stand(drive, ts)

    # --- the steps -----------------------------------------------------------------------------------

    async def _hold_many(self, ts: Sequence[TransferRecord], timeout: float) -> list[Hold | Refused | StepUncertain]:
        ttl = self.policy.hold_ttl_seconds
        orders = [
            HoldOrder(step_request_id(t.transfer_id, "hold"), t.transfer_id, t.sender_id, t.total_coins, ttl)
            for t in ts
        ]
        return await self.wallet.hold_many(orders, timeout)

    async def _credit_many(self, ts: Sequence[TransferRecord], timeout: float) -> list[Refused | StepUncertain | None]:
        """The credit of each gift (held: its promotional coins known); with its deadline, except for a
        gift an earlier version decided to credit without one (asked again exactly as it was asked)."""
        orders = [
            CreditOrder(
                step_request_id(t.transfer_id, "credit"),
                t.transfer_id,
                t.recipient_id,
                t.total_diamonds,
                t.total_coins,
                t.promotional_coins or 0,
                None
                if t.step in (CREDITING, CREDITED)
                else (t.credit_deadline or credit_deadline(t.created_at, self.policy)),
            )
            for t in ts
        ]
        return await self.payout.credit_many(orders, timeout)

    async def _capture_many(self, ts: Sequence[TransferRecord], timeout: float) -> list[Hold | Refused | StepUncertain]:
        orders = [CaptureOrder(step_request_id(t.transfer_id, "capture"), t.transfer_id) for t in ts]
        return await self.wallet.capture_many(orders, timeout)

    async def _release(self, drive: _Drive, t: TransferRecord, owner: str) -> None:
        """Give a failing gift's coins back (a replay, if given back before), then fail it."""
        order = ReleaseOrder(step_request_id(t.transfer_id, "release"), t.transfer_id)

        async def release(ts: Sequence[TransferRecord], timeout: float) -> list[Hold | Refused | StepUncertain]:
            try:
                return [await self.wallet.release(order, timeout)]
            except (Refused, StepUncertain) as answer:
                return [answer]

        for t_now, released in await self._ask(drive, [t], owner, release):
            if isinstance(released, Refused) and released.error.reason not in NOTHING_HELD:
                with in_trace(t):
                    log.error("gift %s: wallet refused to release its hold: %s", t.transfer_id, released)
                await self._postpone(drive, [t_now], owner, str(released))
                continue
            self.failpoint("after_release")
            await self._finish_failed(drive, t_now, owner, failure(t_now))

    async def _ask(
        self,
        drive: _Drive,
        ts: Sequence[TransferRecord],
        owner: str,
        call: Callable[[Sequence[TransferRecord], float], Awaitable[Sequence[A | StepUncertain]]],
    ) -> list[tuple[TransferRecord, A]]:
        """One step for the gifts `ts`, each with its definite answer (a result or a refusal).

        The gifts without one (the call, or their item, got no definite answer) are asked again, with
        the same request ids and their leases extended, for as long as the step's deadline allows
        from the first call; then they are postponed. A gift whose lease was lost is left out.
        """
        answered: list[tuple[TransferRecord, A]] = []
        ends = time.monotonic() + self.policy.step_deadline_seconds
        delay = self.policy.retry_backoff_seconds
        waiting = list(ts)
        why = ""
        while waiting:
            try:
                replies: Sequence[A | StepUncertain] = await call(waiting, max(ends - time.monotonic(), 0.001))
            except StepUncertain as uncertain:
                replies = [uncertain] * len(waiting)
            retry = []
            for t, reply in zip(waiting, replies, strict=True):
                if isinstance(reply, StepUncertain):
                    retry.append(t)
                    why = str(reply)
                else:
                    answered.append((t, reply))
            if retry:
                steps = sorted({t.step for t in retry})
                with in_trace(retry[0]):  # the step's span is in the first gift's trace, linked to the others'
                    log.warning("%d gift(s) at %s without an answer: %s", len(retry), steps, why)
            if not retry or time.monotonic() + delay >= ends:
                waiting = retry
                break
            await asyncio.sleep(delay)
            delay *= 2
            waiting = await self._renew(drive, retry, owner)
        if waiting:
            await self._postpone(drive, waiting, owner, why)
        return answered

    # --- writes ------------------------------------------------------------------------------------

    async def _renew(self, drive: _Drive, ts: list[TransferRecord], owner: str) -> list[TransferRecord]:
        """Extend the leases of gifts asked again; the ones whose lease another replica took are left out."""
        now = self.clock.now()
        until = now + timedelta(seconds=self.policy.lease_seconds)
        ids = [t.transfer_id for t in ts]
        kept = await self._db(lambda uow: uow.transfers.renew(ids, owner, now, until))
        drive.elsewhere.update(t.transfer_id for t in ts if t.transfer_id not in kept)
        return [t for t in ts if t.transfer_id in kept]

    async def _advance(self, drive: _Drive, t: TransferRecord, owner: str, **values: Any) -> TransferRecord | None:
        """Write the gift's next step, extending the lease for it; None if another replica has the gift."""
        now = self.clock.now()
        values["updated_at"] = now
        values["lease_until"] = now + timedelta(seconds=self.policy.lease_seconds)
        if not await self._db(lambda uow: uow.transfers.advance(t.transfer_id, owner, t.step, **values)):
            drive.elsewhere.add(t.transfer_id)
            return None
        return replace(t, **values)

    async def _start_failing(
        self, drive: _Drive, t: TransferRecord, owner: str, error: DomainError
    ) -> list[TransferRecord]:
        """FAILING, with the error it will fail with once its hold is released ([] if the lease was lost)."""
        failing = await self._advance(
            drive, t, owner, step=FAILING, failure_reason=error.reason, failure_error=error.to_json()
        )
        return [] if failing is None else [failing]

    async def _finish_failed(self, drive: _Drive, t: TransferRecord, owner: str, error: DomainError) -> None:
        """FAILED, and the coins counted against the daily limit given back, in one transaction."""
        now = self.clock.now()
        values: dict[str, Any] = {
            "state": FAILED,
            "step": FAILED,
            "failure_reason": error.reason,
            "failure_error": error.to_json(),
            "lease_owner": "",
            "lease_until": None,
            "updated_at": now,
        }

        def fail(uow: UnitOfWork) -> bool:
            if not uow.transfers.advance(t.transfer_id, owner, t.step, **values):
                return False
            uow.spending.give_back(t.sender_id, t.spend_day, t.total_coins)
            return True

        if not await self._db(fail):
            drive.elsewhere.add(t.transfer_id)
            return
        GIFT_OUTCOMES.add(1, {"giftcoin.gift.state": "failed", "error.type": error.reason})
        with in_trace(t):
            log.info("gift %s failed: %s", t.transfer_id, error.reason)
        drive.ended[t.transfer_id] = replace(t, **values)

    async def _complete_many(self, drive: _Drive, ts: list[TransferRecord], owner: str) -> None:
        """COMPLETED and their live-feed events, one transaction per step they stand at (the outbox)."""
        by_step: dict[str, list[TransferRecord]] = defaultdict(list)
        for t in ts:
            by_step[t.step].append(t)
        for from_step, group in by_step.items():
            with self.batch_span("complete", group):
                await self._complete_from(drive, group, owner, from_step)

    async def _complete_from(self, drive: _Drive, ts: list[TransferRecord], owner: str, from_step: str) -> None:
        now = self.clock.now()
        values: dict[str, Any] = {
            "state": COMPLETED,
            "step": COMPLETED,
            "completed_at": now,
            "lease_owner": "",
            "lease_until": None,
            "updated_at": now,
        }

        def complete(uow: UnitOfWork) -> set[str]:
            # With what the hold said (kept for the record: payout's credit was asked with them).
            rows = [
                {
                    "transfer_id": t.transfer_id,
                    "promotional_coins": t.promotional_coins,
                    "hold_expire_at": t.hold_expire_at,
                }
                for t in ts
            ]
            counts = Counter(t.target_key for t in ts)
            advancing = uow.transfers.advance_many(owner, from_step, rows, **values)
            numbering = uow.feed.number(counts)  # for every gift: another replica taking one over is rare
            advanced, numbers = advancing(), numbering()  # one round trip
            lost = Counter(t.target_key for t in ts if t.transfer_id not in advanced)
            if lost:  # their events are not this transaction's to write: give their numbers back
                uow.feed.renumber({key: numbers[key].first + counts[key] - lost[key] - 1 for key in lost})
            events = [(t.target_key, t) for t in ts if t.transfer_id in advanced]
            uow.feed.append(events, numbers, now)
            return advanced

        advanced = await self._db(complete)
        done = [t for t in ts if t.transfer_id in advanced]
        drive.elsewhere.update(t.transfer_id for t in ts if t.transfer_id not in advanced)
        drive.ended.update({t.transfer_id: replace(t, **values) for t in done})
        if done:  # counted once per batch: an instrument's add costs about as much whatever it adds
            GIFT_OUTCOMES.add(len(done), {"giftcoin.gift.state": "completed"})
            COINS_MOVED.add(sum(t.total_coins for t in done), {"giftcoin.movement.kind": "gift"})
            DIAMONDS_MOVED.add(sum(t.total_diamonds for t in done), {"giftcoin.movement.kind": "gift"})
        for target_key in sorted({t.target_key for t in done}):
            self.on_completed(target_key)

    async def _postpone(self, drive: _Drive, ts: list[TransferRecord], owner: str, why: str) -> None:
        """Leave the gifts for recovery, each not before a delay that doubles with its postponements,
        bounded by its hold's life (`retry_delay`)."""
        now = self.clock.now()
        delays = {t.transfer_id: retry_delay(t, now, self.policy) for t in ts}

        def postpone(uow: UnitOfWork) -> None:
            for t in ts:
                uow.transfers.postpone(t.transfer_id, owner, now, now + timedelta(seconds=delays[t.transfer_id]))

        await self._db(postpone)
        for t in ts:
            with in_trace(t):
                log.warning(
                    "gift %s postponed at step %s for %.1fs: %s", t.transfer_id, t.step, delays[t.transfer_id], why
                )
        drive.elsewhere.update(t.transfer_id for t in ts)  # read back: as it now stands

    async def _as_they_stand(self, drive: _Drive, ts: Sequence[TransferRecord]) -> dict[str, TransferRecord]:
        """Each gift of a drive as it stands now: as the drive left it, or read back."""
        unread = [t.transfer_id for t in ts if t.transfer_id not in drive.ended or t.transfer_id in drive.elsewhere]
        read: dict[str, TransferRecord] = {}
        if unread:

            def load(uow: UnitOfWork) -> dict[str, TransferRecord]:
                return {tid: t for tid in unread if (t := uow.transfers.get(tid)) is not None}

            read = await self._db(load)
        return {t.transfer_id: read.get(t.transfer_id) or drive.ended.get(t.transfer_id) or t for t in ts}


def retry_delay(t: TransferRecord, now: datetime, policy: SagaPolicy) -> float:
    """How long recovery leaves a postponed gift: a delay that doubles with its postponements, but while
    its hold may still back it, at most half the hold's remaining life and not past its expiry less a
    step deadline (then at once: the last chance), so that a capture asked again after a short outage
    still finds the hold. Once the hold has lapsed, the doubling delay alone (wallet captures from the
    balance).

    Whether a gift found at `recorded` was credited only its steps' replays tell, so every pending gift
    is bounded so; its hold's expiry is what the hold answered in this drive, or else the earliest any
    hold of it can have (made once it was recorded).
    """
    delay = min(policy.retry_max_seconds, policy.retry_base_seconds * 2 ** min(t.attempts, 20))
    expiry = t.hold_expire_at or t.created_at + timedelta(seconds=policy.hold_ttl_seconds)
    life = (expiry - now).total_seconds()
    if life <= 0:
        return delay
    return max(0.0, min(delay, life / 2, life - policy.step_deadline_seconds))
