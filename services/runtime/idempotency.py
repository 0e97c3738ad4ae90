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
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from sqlalchemy import Connection, Table, and_, bindparam, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from services.runtime.clock import Clock
from services.runtime.db import Database
from services.runtime.errors import DomainError, aborted, already_exists

M = TypeVar("M", bound=Message)

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
        claim_or_replay = self._claim(caller, request_id, method, fingerprint(method, request))
        if isinstance(claim_or_replay, bytes):
            return response_type.FromString(claim_or_replay)
        claim = claim_or_replay

        def work_and_record(conn: Connection) -> M:
            response = work(conn)
            self._record_success(conn, claim, response.SerializeToString(deterministic=True))
            return response

        try:
            return self.db.run(work_and_record)
        except DomainError as error:
            if error.code in _RECORDED_FAILURES:
                self._record_failure(claim, error)
            else:
                self._release(claim)
            raise
        except BaseException:
            self._release(claim)
            raise

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
