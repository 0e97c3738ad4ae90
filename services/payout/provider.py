"""The built-in sandbox payout provider: an adapter, like storage, behind model.PayoutProvider.

A provider is idempotent by the key the payout service sends (the payout id): submitting the same
key again never pays again, it reports the payment already made. That is what lets the processor
retry after a crash at any point without paying twice.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from services.payout.model import (
    PROVIDER_FAILED,
    PROVIDER_PAID,
    PROVIDER_PENDING,
    SANDBOX,
    ProviderPayment,
    ProviderResult,
    SandboxBehaviour,
    sandbox_behaviour,
)
from services.payout.storage import sandbox_payments
from services.runtime.clock import Clock
from services.runtime.db import Database


class IdempotencyKeyReused(Exception):
    """The same key was submitted with a different payment: a bug in the caller, never paid."""


class SandboxProvider:
    """A provider that succeeds, fails or delays on demand, as its destination says.

    Sandbox destinations: "succeed", "fail", "delay:<seconds>" (pending, then paid once the clock has
    passed the delay). Destinations of other kinds (bank account, PayPal) are paid at once, as in a
    real provider's test mode. Its records live in `sandbox_payments`, written in transactions of its
    own, as a real provider's would be: the payout service's transactions never include them.
    """

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def submit(self, payment: ProviderPayment) -> ProviderResult:
        now = self.clock.now()
        behaviour = (
            sandbox_behaviour(payment.destination_reference)
            if payment.destination_kind == SANDBOX
            else SandboxBehaviour("succeed")
        ) or SandboxBehaviour("fail")
        if behaviour.outcome == "fail":
            state, reason = PROVIDER_FAILED, "sandbox: the destination refused the payment"
        elif behaviour.delay_seconds:
            state, reason = PROVIDER_PENDING, ""
        else:
            state, reason = PROVIDER_PAID, ""
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    insert(sandbox_payments).values(
                        idempotency_key=payment.idempotency_key,
                        provider_reference=f"sbx_{secrets.token_hex(10)}",
                        beneficiary=payment.beneficiary,
                        destination_reference=payment.destination_reference,
                        amount_minor=payment.amount_minor,
                        currency=payment.currency,
                        state=state,
                        failure_reason=reason,
                        created_at=now,
                        settle_at=now + timedelta(seconds=behaviour.delay_seconds),
                    )
                )
        except IntegrityError:
            pass  # submitted before under this key: report that payment, pay nothing
        existing = self.db.run(lambda conn: self._read(conn, payment.idempotency_key))
        if existing is None:
            raise RuntimeError(f"sandbox payment {payment.idempotency_key} vanished")
        amount, currency, result = existing
        if (amount, currency) != (payment.amount_minor, payment.currency):
            raise IdempotencyKeyReused(f"key {payment.idempotency_key} was used for {amount} {currency}")
        return result

    def status(self, idempotency_key: str) -> ProviderResult | None:
        found = self.db.run(lambda conn: self._read(conn, idempotency_key))
        return None if found is None else found[2]

    def _read(self, conn: Connection, key: str) -> tuple[int, str, ProviderResult] | None:
        t = sandbox_payments
        row = conn.execute(select(t).where(t.c.idempotency_key == key)).one_or_none()
        if row is None:
            return None
        state = row.state
        if state == PROVIDER_PENDING and self.clock.now() >= row.settle_at:
            conn.execute(
                update(t).where(t.c.idempotency_key == key, t.c.state == PROVIDER_PENDING).values(state=PROVIDER_PAID)
            )
            state = PROVIDER_PAID
        return int(row.amount_minor), row.currency, ProviderResult(row.provider_reference, state, row.failure_reason)

    def payments(self, beneficiary: str) -> list[tuple[str, int, str]]:
        """(idempotency key, amount, state) of every payment to `beneficiary`, for tests and demos."""
        t = sandbox_payments

        def read(conn: Connection) -> list[tuple[str, int, str]]:
            rows = conn.execute(
                select(t.c.idempotency_key, t.c.amount_minor, t.c.state)
                .where(t.c.beneficiary == beneficiary)
                .order_by(t.c.created_at, t.c.idempotency_key)
            )
            return [(r.idempotency_key, int(r.amount_minor), r.state) for r in rows]

        return self.db.run(read)
