"""Request-id-guarded calls: the one way a servicer runs a mutating RPC's work (SPEC §6).

A service builds one `GuardedCalls` (in its app) from its request-id store, its unit of work and its
audit log; its servicer then names the unary method and hands over the work, which gets a unit of work
over the transaction that also records the response. The servicer never sees a connection, and every
service keys replays the same way: by the calling service or user, the request id and the unary
method's full name, for the unary RPC and its batch RPC alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from google.protobuf.message import Message
from sqlalchemy import Connection

from services.runtime.audit import AuditLog
from services.runtime.auth import current_caller
from services.runtime.db import Database
from services.runtime.errors import DomainError
from services.runtime.idempotency import BatchItem, RequestIdStore
from services.runtime.validation import Validator

U = TypeVar("U")  # a service's unit of work: its repository calls over one transaction
M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
P = TypeVar("P")  # what a batch's work reads, queued with its request ids
T = TypeVar("T")


class Transactions(Generic[U]):
    """A service's transactions, each over its unit of work: what its domain runs work in outside a
    request (loops, start-up, the feed), blocking or from the event loop (on the database's threads)."""

    def __init__(self, db: Database, unit_of_work: Callable[[Connection], U]) -> None:
        self.db = db
        self.unit_of_work = unit_of_work

    def run(self, work: Callable[[U], T]) -> T:
        return self.db.run(lambda conn: work(self.unit_of_work(conn)))

    async def run_async(self, work: Callable[[U], T]) -> T:
        return await self.db.run_async(lambda conn: work(self.unit_of_work(conn)))

    async def call_async(self, call: Callable[[], T]) -> T:
        """`call` (itself running transactions) on the database's threads."""
        return await self.db.call_async(call)


class GuardedCalls(Generic[U]):
    """A service's mutating RPCs, each run at most once per (caller, request id), on its unit of work."""

    def __init__(
        self,
        service: str,
        request_ids: RequestIdStore,
        unit_of_work: Callable[[Connection], U],
        audit: AuditLog | None = None,
    ) -> None:
        self.service = service  # the full service name, "giftcoin.wallet.v1.WalletService"
        self.request_ids = request_ids
        self.unit_of_work = unit_of_work
        self.audit = audit
        self.transactions = Transactions(request_ids.db, unit_of_work)

    def method(self, name: str) -> str:
        """A unary method's full name: replays are keyed by it, for it and its batch RPC alike."""
        return f"/{self.service}/{name}"

    def once(
        self, method: str, request: Message, response_type: type[M], work: Callable[[U], M], audit_target: str = ""
    ) -> M:
        """`work` once for the request's id, in one transaction with its recorded response; an operator's
        action (`audit_target`: what it acts on) with its audit record too."""
        return self.once_prepared(method, request, response_type, lambda: None, lambda uow, _: work(uow), audit_target)

    def once_prepared(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        prepare: Callable[[], P],
        work: Callable[[U, P], M],
        audit_target: str = "",
    ) -> M:
        """`once`, with `prepare()` run first, outside the work's transaction (asking another system:
        a store verifying a receipt), its result given to `work`; a replay runs neither."""

        def run(conn: Connection, prepared: P) -> M:
            def act(c: Connection) -> M:
                return work(self.unit_of_work(c), prepared)

            if audit_target:
                if self.audit is None:
                    raise RuntimeError(f"{self.service} has no audit log for {method}")
                return self.audit.audited(method, request, audit_target, act)(conn)
            return act(conn)

        request_id: str = getattr(request, "request_id")  # noqa: B009 (every mutating request has one)
        return self.request_ids.execute_prepared(
            current_caller().subject, self.method(method), request, request_id, response_type, prepare, run
        )

    def each(
        self,
        method: str,
        requests: Sequence[R],
        validate: Callable[[R], Validator],
        response_type: type[M],
        work: Callable[[U, list[R], P], Sequence[M | DomainError]],
        read: Callable[[U, list[R]], P],
    ) -> list[M | DomainError]:
        """A batch RPC's requests, each answered as the unary `method` would answer it (`read` queues
        what `work` reads, for them all, with their request ids: one round trip)."""
        return self.request_ids.execute_requests(
            current_caller().subject,
            self.method(method),
            requests,
            validate,
            response_type,
            lambda conn, new, reads: work(self.unit_of_work(conn), new, reads),
            lambda conn, asked: read(self.unit_of_work(conn), asked),
        )

    def batch(
        self,
        items: Sequence[BatchItem],
        response_type: type[M],
        work: Callable[[U, list[int], P], Sequence[M | DomainError]],
        read: Callable[[U], P],
    ) -> list[M | DomainError]:
        """Requests of several callers in one transaction (a batcher's), each under its own id."""
        return self.request_ids.execute_batch(
            items,
            response_type,
            lambda conn, new, reads: work(self.unit_of_work(conn), new, reads),
            lambda conn: read(self.unit_of_work(conn)),
        )

    def item(self, method: str, request: Message) -> BatchItem:
        """The caller's request of the unary `method`, as one item of a `batch`."""
        request_id: str = getattr(request, "request_id")  # noqa: B009 (every mutating request has one)
        return BatchItem(current_caller().subject, self.method(method), request, request_id)

    def read(self, work: Callable[[U], T]) -> T:
        """`work` in a transaction of its own, guarded by nothing: for reads."""
        return self.transactions.run(work)
