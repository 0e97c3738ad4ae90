"""The request-id store (AIP-155), with the semantics of SPEC §6.

- the same id with the same request returns the first response again;
- the same id with a different request is refused (ALREADY_EXISTS, REQUEST_ID_REUSED);
- while the first request runs, a duplicate gets ABORTED, REQUEST_IN_FLIGHT (retryable);
- a business failure is recorded and replayed: a retry after a top-up is a new request;
- ids are kept for the retention window, then reaped.

A request first claims its id in a short transaction of its own (a row in state `running` with a
lease). Its work then runs in one transaction that also records the response, guarded by the
claim's owner token: either the effects and the recorded response commit together, or neither
does. A claim whose process died is taken over once its lease has passed — safe, because nothing
of its work committed.

A batch (`execute_batch`: the internal batch RPCs) keeps the same semantics per item, under the
item's own id and its unary method's name, so that a replay by either RPC answers the same. It needs
no claim transaction: the decisions, the work of every new item and their recorded outcomes are one
transaction, and the (caller, request id) primary key makes a concurrent claim of the same id fail
that transaction, which is then decided again (the other claim is then seen, in flight or done).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from sqlalchemy import Connection, Table, and_, bindparam, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.runtime.clock import Clock
from services.runtime.db import Database, insert_rows, is_unique_violation, keys_in
from services.runtime.errors import DomainError, FieldViolation, aborted, already_exists, invalid_argument
from services.runtime.pipeline import pipeline
from services.runtime.validation import Validator

M = TypeVar("M", bound=Message)
T = TypeVar("T")
R = TypeVar("R", bound=Message)
P = TypeVar("P")  # what a batch's work reads, queued before its request ids are looked up

MAX_BATCH = 500  # requests in one batch RPC (the contracts' limit)

# Failures that are about the request itself and so must fail again under the same id. Anything else
# (UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED, INTERNAL) releases the id so that a retry can succeed.
_RECORDED_FAILURES = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT,
}


def fingerprint(method: str, request: Message) -> str:
    """What makes two requests "the same": the method and every field of the message."""
    digest = hashlib.sha256(method.encode())
    digest.update(b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _reused(request_id: str, method: str) -> DomainError:
    return already_exists(
        "REQUEST_ID_REUSED",
        f"request id {request_id} was already used for a different request ({method})",
        request_id=request_id,
        method=method,
    )


@dataclass(frozen=True)
class BatchItem:
    """One request of a batch RPC: an instance of a unary method, answered as that method would be."""

    caller: str
    method: str  # the unary method's full name, as `execute` gets it ("/giftcoin.wallet.v1.WalletService/HoldCoins")
    request: Message
    request_id: str

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.method, self.request)


@dataclass(frozen=True)
class _Claim:
    caller: str
    request_id: str
    owner: str


class RequestIdStore:
    def __init__(self, db: Database, table: Table, clock: Clock, lease_seconds: int = 30) -> None:
        self.db = db
        self.table = table
        self.clock = clock
        self.lease = timedelta(seconds=lease_seconds)
        # Every mutating RPC runs these: built once with bound parameters (building a statement costs
        # more than executing it). Parameter names avoid the column names, which UPDATE ... SET reserves.
        t = table
        self._insert_claim = t.insert()
        claimed = and_(
            t.c.caller == bindparam("claim_caller"),
            t.c.request_id == bindparam("claim_request_id"),
            t.c.owner == bindparam("claim_owner"),
            t.c.state == "running",
        )
        self._finish_claim_with_response = (
            update(t).where(claimed).values(state=bindparam("new_state"), response=bindparam("new_response"))
        )
        self._finish_claim_with_error = (
            update(t).where(claimed).values(state=bindparam("new_state"), error=bindparam("new_error"))
        )
        self._delete_claim = delete(t).where(claimed)
        # By the whole primary key (caller, request id): by request id alone would scan the table.
        self._select_batch = select(t).where(keys_in([t.c.caller, t.c.request_id], "keys"))
        self._delete_dead_claim = delete(t).where(
            and_(
                t.c.caller == bindparam("d_caller"),
                t.c.request_id == bindparam("d_request_id"),
                t.c.owner == bindparam("d_owner"),
                t.c.state == "running",
            )
        )

    def execute(
        self,
        caller: str,
        method: str,
        request: Message,
        request_id: str,
        response_type: type[M],
        work: Callable[[Connection], M],
    ) -> M:
        """Run `work` at most once for (caller, request_id); replay its outcome afterwards."""
        return self.execute_prepared(
            caller, method, request, request_id, response_type, lambda: None, lambda conn, _: work(conn)
        )

    def execute_prepared(
        self,
        caller: str,
        method: str,
        request: Message,
        request_id: str,
        response_type: type[M],
        prepare: Callable[[], T],
        work: Callable[[Connection, T], M],
    ) -> M:
        """`execute`, with `prepare()` run first, once the request id is claimed and outside the work's
        transaction (asking another system: a store verifying a receipt), and its result given to
        `work`. A replay runs neither; a DomainError of `prepare` is recorded as the work's would be."""
        claim_or_replay = self._claim(caller, request_id, method, fingerprint(method, request))
        if isinstance(claim_or_replay, bytes):
            return response_type.FromString(claim_or_replay)
        claim = claim_or_replay

        try:
            prepared = prepare()

            def work_and_record(conn: Connection) -> M:
                response = work(conn, prepared)
                self._record_success(conn, claim, response.SerializeToString(deterministic=True))
                return response

            return self._run_deciding_again(work_and_record)
        except DomainError as error:
            if error.code in _RECORDED_FAILURES:
                self._record_failure(claim, error)
            else:
                self._release(claim)
            raise
        except BaseException:
            self._release(claim)
            raise

    def execute_batch(
        self,
        items: Sequence[BatchItem],
        response_type: type[M],
        work: Callable[[Connection, list[int], P], Sequence[M | DomainError]],
        read: Callable[[Connection], P],
    ) -> list[M | DomainError]:
        """`execute` for many requests in one transaction; each item's outcome, in order.

        `read(conn)` queues in the transaction's pipeline what the work reads, for every item (by the
        items' keys, whichever turn out to be new): it goes to the database in one round trip with the
        items' request ids. `work(conn, new, read)` then gets the indexes of the items that are new (not
        replays) and what `read` returned, and returns one outcome for each new item: a response, or the
        DomainError the unary method would raise. It must write nothing for an item it refuses.
        Replays, REQUEST_ID_REUSED and REQUEST_IN_FLIGHT are decided here; a second copy of an id
        within the batch is answered as its first appearance decides.
        """
        prints = [item.fingerprint for item in items]
        return self._run_deciding_again(lambda conn: self._run_batch(conn, items, prints, response_type, work, read))

    def _run_deciding_again(self, work: Callable[[Connection], T]) -> T:
        """`work` in one transaction, decided again (Database.run) when a unique key fails it: a concurrent
        claim of one of its request ids, or a concurrent write of what it decided to write. Racing,
        again and again: nothing of it happened, and the caller may retry."""
        try:
            return self.db.run(work)
        except IntegrityError as error:
            if not is_unique_violation(error):
                raise
            raise aborted(
                "REQUEST_IN_FLIGHT", "these requests are being made concurrently; retry with the same ids"
            ) from error

    def _run_batch(
        self,
        conn: Connection,
        items: Sequence[BatchItem],
        prints: list[str],
        response_type: type[M],
        work: Callable[[Connection, list[int], P], Sequence[M | DomainError]],
        read: Callable[[Connection], P],
    ) -> list[M | DomainError]:
        now = self.clock.now()
        keys = sorted({(i.caller, i.request_id) for i in items})
        recorded = pipeline(conn).send(self._select_batch, {"keys": keys})
        reads = read(conn)  # sent with the request ids: one round trip
        found = {(row.caller, row.request_id): row for row in recorded.get()}
        outcomes: list[M | DomainError | None] = [None] * len(items)
        new: list[int] = []
        first: dict[tuple[str, str], int] = {}  # where each id first appears in the batch
        for index, item in enumerate(items):
            key = (item.caller, item.request_id)
            row = found.get(key)
            if key in first:  # the same id again in this batch: answered as its first appearance decides
                earlier = first[key]
                if prints[earlier] != prints[index]:
                    outcomes[index] = _reused(item.request_id, item.method)
                elif outcomes[earlier] is not None:  # a replay: the same answer
                    outcomes[index] = outcomes[earlier]
                else:
                    outcomes[index] = aborted(
                        "REQUEST_IN_FLIGHT",
                        f"request {item.request_id} appears twice in the batch",
                        request_id=item.request_id,
                    )
                continue
            first[key] = index
            if row is None:
                new.append(index)
            elif row.fingerprint != prints[index]:
                outcomes[index] = _reused(item.request_id, row.method)
            elif row.state == "succeeded":
                outcomes[index] = response_type.FromString(bytes(row.response))
            elif row.state == "failed":
                outcomes[index] = DomainError.from_json(row.error)
            elif row.lease_until > now:
                outcomes[index] = aborted(
                    "REQUEST_IN_FLIGHT",
                    f"request {item.request_id} is still running; retry with the same request id",
                    request_id=item.request_id,
                )
            else:  # a claim whose process died: nothing of its work committed, so take it over
                pipeline(conn).send(
                    self._delete_dead_claim,
                    {"d_caller": item.caller, "d_request_id": item.request_id, "d_owner": row.owner},
                )
                new.append(index)
        done = work(conn, new, reads) if new else []
        rows: list[dict[str, object]] = []
        for index, outcome in zip(new, done, strict=True):
            outcomes[index] = outcome
            item = items[index]
            record: dict[str, object] = {
                "caller": item.caller,
                "request_id": item.request_id,
                "method": item.method,
                "fingerprint": prints[index],
                "owner": "",
                "lease_until": now,
                "created_at": now,
                "attempts": 1,
                "response": None,
                "error": None,
            }
            if isinstance(outcome, DomainError):
                if outcome.code not in _RECORDED_FAILURES:
                    continue  # a transient failure keeps no record: a retry may succeed
                record.update(state="failed", error=outcome.to_json())
            else:
                record.update(state="succeeded", response=outcome.SerializeToString(deterministic=True))
            rows.append(record)
        if rows:  # one statement, sent with the commit; a concurrent claim of one of these ids fails it
            insert_rows(conn, self.table, rows)
        return [o for o in outcomes if o is not None]

    def execute_requests(
        self,
        caller: str,
        method: str,
        requests: Sequence[R],
        validate: Callable[[R], Validator],
        response_type: type[M],
        work: Callable[[Connection, list[R], P], Sequence[M | DomainError]],
        read: Callable[[Connection, list[R]], P],
    ) -> list[M | DomainError]:
        """A batch RPC's requests, each an instance of the unary `method`, answered as it would answer them.

        1 to MAX_BATCH requests, else INVALID_ARGUMENT for the whole call. A request `validate` finds
        fault with is refused as the unary RPC refuses it (its fields named `requests[i].`) and not
        recorded; the others go through `execute_batch`: `read` gets them all (to queue what the work
        reads), `work` the new ones, in order, with what `read` returned.
        """
        if not 1 <= len(requests) <= MAX_BATCH:
            raise invalid_argument([FieldViolation("requests", f"1 to {MAX_BATCH} requests")])
        outcomes: list[M | DomainError | None] = [None] * len(requests)
        valid: list[int] = []  # positions of the valid requests
        for i, request in enumerate(requests):
            violations = validate(request).violations
            if violations:
                outcomes[i] = invalid_argument(
                    [FieldViolation(f"requests[{i}].{v.field}", v.description) for v in violations]
                )
            else:
                valid.append(i)
        if valid:
            items = [BatchItem(caller, method, requests[i], getattr(requests[i], "request_id")) for i in valid]  # noqa: B009
            done = self.execute_batch(
                items,
                response_type,
                lambda conn, new, reads: work(conn, [requests[valid[j]] for j in new], reads),
                lambda conn: read(conn, [requests[i] for i in valid]),
            )
            for i, outcome in zip(valid, done, strict=True):
                outcomes[i] = outcome
        return [o for o in outcomes if o is not None]

    def reap(self, retention_seconds: int) -> int:
        """Forget ids older than the retention window; returns how many."""
        now = self.clock.now()
        cutoff = now - timedelta(seconds=retention_seconds)
        t = self.table
        with self.db.transaction() as conn:
            result = conn.execute(
                delete(t).where(and_(t.c.created_at < cutoff, or_(t.c.state != "running", t.c.lease_until < now)))
            )
            return result.rowcount

    # --- the claim's life --------------------------------------------------------------------

    def _claim(self, caller: str, request_id: str, method: str, print_: str) -> _Claim | bytes:
        t = self.table
        now = self.clock.now()
        owner = secrets.token_hex(8)
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    self._insert_claim,
                    {
                        "caller": caller,
                        "request_id": request_id,
                        "method": method,
                        "fingerprint": print_,
                        "state": "running",
                        "owner": owner,
                        "lease_until": now + self.lease,
                        "created_at": now,
                        "attempts": 1,
                    },
                )
            return _Claim(caller, request_id, owner)
        except IntegrityError:
            pass
        with self.db.transaction() as conn:
            row = conn.execute(select(t).where(and_(t.c.caller == caller, t.c.request_id == request_id))).one_or_none()
            if row is None:  # reaped between our insert and this read: let the client retry
                raise aborted("REQUEST_IN_FLIGHT", "request id is being recycled; retry", request_id=request_id)
            if row.fingerprint != print_:
                raise already_exists(
                    "REQUEST_ID_REUSED",
                    f"request id {request_id} was already used for a different request ({row.method})",
                    request_id=request_id,
                    method=row.method,
                )
            if row.state == "succeeded":
                return bytes(row.response)
            if row.state == "failed":
                raise DomainError.from_json(row.error)
            if row.lease_until > now:
                raise aborted(
                    "REQUEST_IN_FLIGHT",
                    f"request {request_id} is still running; retry with the same request id",
                    request_id=request_id,
                )
            # The first attempt died holding the claim; nothing of it committed, so take it over.
            taken = conn.execute(
                update(t)
                .where(and_(t.c.caller == caller, t.c.request_id == request_id, t.c.owner == row.owner))
                .values(owner=owner, lease_until=now + self.lease, attempts=t.c.attempts + 1)
            )
            if taken.rowcount != 1:
                raise aborted("REQUEST_IN_FLIGHT", f"request {request_id} is still running", request_id=request_id)
            return _Claim(caller, request_id, owner)

    @staticmethod
    def _key(claim: _Claim) -> dict[str, str]:
        return {"claim_caller": claim.caller, "claim_request_id": claim.request_id, "claim_owner": claim.owner}

    def _record_success(self, conn: Connection, claim: _Claim, response: bytes) -> None:
        done = conn.execute(
            self._finish_claim_with_response, {**self._key(claim), "new_state": "succeeded", "new_response": response}
        )
        if done.rowcount != 1:  # our lease passed and another attempt took over: undo our work
            raise aborted("REQUEST_IN_FLIGHT", "request id claimed by a later attempt", request_id=claim.request_id)

    def _record_failure(self, claim: _Claim, error: DomainError) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                self._finish_claim_with_error, {**self._key(claim), "new_state": "failed", "new_error": error.to_json()}
            )

    def _release(self, claim: _Claim) -> None:
        with self.db.transaction() as conn:
            conn.execute(self._delete_claim, self._key(claim))
