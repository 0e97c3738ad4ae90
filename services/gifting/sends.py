"""A SendGift batch, from the sends asked to their answers: the one way a gift is sent.

The sends that arrive together (the servicer's batcher) are recorded in one transaction, each under
its request id (`record`: the servicer's request-id-guarded call, which replays what an id recorded
before), then the gifts this call recorded and the idle ones its replays name are driven by the saga
together; each send is answered with its gift as it stands (COMPLETED, PENDING) or its refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from services.gifting.domain import Gifts, SendReads, UnitOfWork, failure, in_flight, not_recorded, unread
from services.gifting.model import FAILED, PENDING, SendAsk, TransferRecord
from services.gifting.ports import new_lease_owner
from services.gifting.saga import Saga
from services.runtime.errors import DomainError

log = logging.getLogger(__name__)

RecordWork = Callable[[UnitOfWork, list[int], SendReads], list[TransferRecord | DomainError]]
ReadWork = Callable[[UnitOfWork], SendReads]
# Runs `work` over the asks its request ids have not answered yet (their indexes), in the one
# transaction that records their answers, `read` queued with the request ids; for every ask, the id of
# the transfer its request id made (now or before), or its refusal.
RecordSends = Callable[[RecordWork, ReadWork], Awaitable[list[str | DomainError]]]


class Sends:
    """SendGift batches: recorded by the gifts' rules, driven by the saga."""

    def __init__(self, gifts: Gifts, saga: Saga) -> None:
        self.gifts = gifts
        self.saga = saga

    async def send(
        self, asks: Sequence[SendAsk], record: RecordSends, make_way: Callable[[], None] = lambda: None
    ) -> list[TransferRecord | DomainError]:
        """Record the sends, then drive them, and the idle gifts the replays name, together (`make_way`:
        the next batch may start once they are credited). Every send is answered: its gift as it
        stands, or its refusal; never an exception."""
        owner = new_lease_owner()
        recorded: dict[int, TransferRecord] = {}

        def work(uow: UnitOfWork, new: list[int], reads: SendReads) -> list[TransferRecord | DomainError]:
            recorded.clear()  # the transaction may run again
            outcomes = self.gifts.record_sends(uow, [asks[i] for i in new], owner, reads)
            recorded.update({i: o for i, o in zip(new, outcomes, strict=True) if isinstance(o, TransferRecord)})
            return outcomes

        try:
            with self.saga.batch_span("record", asks):
                made = await record(work, lambda uow: self.gifts.read_sends(uow, asks))
        except Exception:
            make_way()
            log.exception("recording a batch of %d send(s) failed", len(asks))
            return [not_recorded(a.request_id) for a in asks]
        # The transfers this call recorded: a transaction decided again (a concurrent duplicate committed
        # first) answers some sends as replays, and what its first attempt recorded for them is gone.
        fresh = [t for i, t in sorted(recorded.items()) if t.lease_owner == owner and made[i] == t.transfer_id]
        fresh_ids = {t.transfer_id for t in fresh}
        replayed = [m for m in made if isinstance(m, str) and m not in fresh_ids]
        settled = await self.settle(fresh, replayed, owner, make_way)
        return [m if isinstance(m, DomainError) else settled[m] for m in made]

    async def settle(
        self,
        recorded: Sequence[TransferRecord],
        replayed: Sequence[str],
        owner: str,
        make_way: Callable[[], None] = lambda: None,
    ) -> dict[str, TransferRecord | DomainError]:
        """The answers of a SendGift batch, by transfer id: the gifts it just `recorded` (leased to
        `owner`) and the ones its replays name, driven together as far as they go now.

        A replayed gift that no one drives is taken over and driven with the others; one another call
        or replica drives is ABORTED REQUEST_IN_FLIGHT. Each answer is the transfer COMPLETED or PENDING
        (a peer without an answer: recovery finishes it), or the error it FAILED with — never an
        exception: whatever goes wrong inside, each gift is answered as it was last known.
        """
        answers: dict[str, TransferRecord | DomainError] = {tid: unread(tid) for tid in replayed}
        answers.update({t.transfer_id: t for t in recorded})
        try:
            if recorded:
                self.saga.failpoint("after_record")
            taken, others = await self._take_over(sorted(set(replayed)), owner)
            for t in others:
                answers[t.transfer_id] = in_flight(t.transfer_id) if t.state == PENDING else t
            driving = [*recorded, *taken]
            answers.update({t.transfer_id: t for t in taken})
            answers.update(await self.saga.drive(driving, owner, make_way))
        except Exception:
            log.exception("a send batch of %d gift(s) stopped short; each is answered as it stands", len(answers))
        finally:
            make_way()
        return {
            tid: failure(a) if isinstance(a, TransferRecord) and a.state == FAILED else a for tid, a in answers.items()
        }

    async def _take_over(
        self, transfer_ids: Sequence[str], owner: str
    ) -> tuple[list[TransferRecord], list[TransferRecord]]:
        """Claim the pending gifts no one drives (a client's retry may take an idle one at once); the
        ones taken, and the others as they stand."""
        if not transfer_ids:
            return [], []
        now = self.saga.clock.now()
        until = now + timedelta(seconds=self.saga.policy.lease_seconds)

        def take(uow: UnitOfWork) -> tuple[list[TransferRecord], list[TransferRecord]]:
            taken: list[TransferRecord] = []
            others: list[TransferRecord] = []
            for transfer_id in transfer_ids:
                claimed = uow.transfers.claim(transfer_id, owner, now, until, take_idle=True)
                t = uow.transfers.get(transfer_id)
                if t is None:
                    raise RuntimeError(f"transfer {transfer_id} vanished")
                (taken if claimed else others).append(t)
            return taken, others

        return await self.saga.transactions.run_async(take)
