"""Readable text for the services' messages, and JSON for machines.

Amounts stay integers all the way to the screen: money is printed from minor units with integer
division, never through a float.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from giftcoin.common.v1 import common_pb2
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.payout.v1 import payout_pb2
from giftcoin.wallet.v1 import wallet_pb2
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from services.reconciler import Report
from services.runtime.money import format_money


def to_dict(message: Message) -> dict[str, Any]:
    """The proto3 JSON form with field names as in the .proto, defaults included, int64 as numbers."""
    return json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )


def to_json(message: Message) -> str:
    return json.dumps(to_dict(message), sort_keys=True)


def money(value: common_pb2.Money) -> str:
    return format_money(value.amount_minor, value.currency_code)


def count(n: int, unit: str) -> str:
    return f"{n:,} {unit if n == 1 else unit + 's'}"


def signed(n: int) -> str:
    return f"{n:+,}" if n else "0"


def when(stamp: timestamp_pb2.Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def date(value: common_pb2.Date) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}" if value.year else "-"


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """WALLET_STATUS_ACTIVE -> active."""
    return str(enum.Name(value)).removeprefix(prefix).lower().replace("_", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str = "(none)") -> str:
    if not rows:
        return empty
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def page_hint(token: str) -> str:
    return f"\nmore: --page-token {token}" if token else ""


def age(seconds: int) -> str:
    """A duration, roughly: 45s, 12m, 3h05m, 2d04h."""
    seconds = max(0, seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def age_of(stamp: timestamp_pb2.Timestamp) -> str:
    return age(int((datetime.now(UTC) - stamp.ToDatetime(tzinfo=UTC)).total_seconds()))


def audit_records(records: Sequence[common_pb2.AuditRecord], next_page_token: str) -> str:
    rows = [[r.sequence, when(r.create_time), r.actor, r.action, r.target, r.request_id] for r in records]
    return table(["#", "TIME", "ACTOR", "ACTION", "TARGET", "REQUEST ID"], rows) + page_hint(next_page_token)


# --- wallet ---


def wallet(w: wallet_pb2.Wallet) -> str:
    b = w.balance
    status = enum_name(wallet_pb2.WalletStatus, w.status, "WALLET_STATUS_")
    lines = [
        f"wallet of {w.user_id}: {status}, {'adult' if w.adult else 'under 18'}, country {w.country_code}",
        f"  balance: {count(b.total, 'coin')} (held {b.held:,}, available {b.available:,}; "
        f"promotional {b.promotional:,}, purchased {b.purchased:,})",
    ]
    if w.debt:
        lines.append(f"  debt: {count(w.debt, 'coin')} owed from refunds (spending frozen until settled)")
    return "\n".join(lines)


def coin_packages(response: wallet_pb2.ListCoinPackagesResponse) -> str:
    return table(
        ["PACKAGE", "COINS", "PRICE"], [[p.package_id, f"{p.coins:,}", money(p.price)] for p in response.packages]
    )


def purchase(p: wallet_pb2.Purchase) -> str:
    state = enum_name(wallet_pb2.PurchaseState, p.state, "PURCHASE_STATE_")
    return (
        f"purchase {p.purchase_id}: {p.package_id}, {count(p.coins, 'coin')} for {money(p.price)} "
        f"({p.store} transaction {p.store_transaction_id}), {state}"
    )


def promotion(p: wallet_pb2.Promotion) -> str:
    name = f" ({p.name})" if p.name and p.name != p.promotion_id else ""
    return (
        f"promotion {p.promotion_id}{name}: {count(p.coins_per_claim, 'coin')} per claim, "
        f"{p.remaining:,} of {p.budget:,} left, {when(p.start_time)} to {when(p.end_time)}"
    )


def transactions(response: wallet_pb2.ListTransactionsResponse | wallet_pb2.ListUserTransactionsResponse) -> str:
    rows = [
        [
            when(t.create_time),
            enum_name(wallet_pb2.TransactionKind, t.kind, "TRANSACTION_KIND_"),
            signed(t.total_delta),
            signed(t.held_delta),
            signed(t.promotional_delta),
            t.reference,
        ]
        for t in response.transactions
    ]
    return table(["TIME", "KIND", "TOTAL", "HELD", "PROMO", "REFERENCE"], rows) + page_hint(response.next_page_token)


def promotions(response: wallet_pb2.ListPromotionsResponse) -> str:
    rows = [
        [
            p.promotion_id,
            p.name,
            f"{p.coins_per_claim:,}",
            f"{p.budget:,}",
            f"{p.remaining:,}",
            when(p.start_time),
            when(p.end_time),
        ]
        for p in response.promotions
    ]
    headers = ["PROMOTION", "NAME", "PER CLAIM", "BUDGET", "LEFT", "STARTS", "ENDS"]
    return table(headers, rows) + page_hint(response.next_page_token)


def holds(response: wallet_pb2.ListHoldsResponse) -> str:
    rows = [
        [
            when(b.hold.create_time),
            b.hold.hold_id,
            b.hold.gift_id,
            b.hold.user_id,
            f"{b.hold.amount:,}",
            f"{b.hold.promotional_amount:,}",
            enum_name(wallet_pb2.HoldState, b.hold.state, "HOLD_STATE_"),
            f"{b.spent_coins:,}",
            b.capture_transfers,
        ]
        for b in response.holds
    ]
    headers = ["TIME", "HOLD", "GIFT ID", "USER", "COINS", "PROMO", "STATE", "SPENT", "CAPTURES"]
    return table(headers, rows) + page_hint(response.next_page_token)


def wallet_books(r: wallet_pb2.SummarizeBooksResponse) -> str:
    lines = ["fiat taken:"]
    lines += [
        f"  {t.store}: {money(t.amount)} for {count(t.purchases, 'purchase')}, {t.coins:,} coins" for t in r.takings
    ]
    lines += ["  (none)"] if not r.takings else []
    for f in r.refunds:
        kind = enum_name(wallet_pb2.RefundKind, f.kind, "REFUND_KIND_")
        lines.append(
            f"{kind}s: {money(f.amount)} in {f.refunds:,}, {f.coins_reclaimed:,} coins taken back, "
            f"{f.debt_added:,} owed"
        )
    lines += [
        f"refunds reversed: {money(v.amount)} in {v.reversals:,}, {v.coins:,} coins given back" for v in r.reversals
    ]
    lines += [
        f"coins issued: {r.coins_purchased:,} purchased, {r.coins_granted:,} promotional",
        f"now ({when(r.as_of)}): {r.coins_outstanding:,} coins in wallets ({r.coins_outstanding_promotional:,} "
        f"promotional), {r.coins_held:,} held; {r.promotion_budgets_remaining:,} left in promotion budgets",
    ]
    return "\n".join(lines)


# --- gifting ---


def target(t: gifting_pb2.Target) -> str:
    kind = "video" if t.kind == gifting_pb2.TARGET_KIND_VIDEO else "stream"
    return f"{kind} {t.id}"


def gifts(response: gifting_pb2.ListGiftsResponse) -> str:
    rows = [
        [
            g.gift_id,
            g.name,
            f"{g.coin_price:,}",
            f"{g.diamonds:,}",
            g.version,
            enum_name(gifting_pb2.GiftState, g.state, "GIFT_STATE_"),
        ]
        for g in response.gifts
    ]
    return table(["GIFT", "NAME", "COINS", "DIAMONDS", "VERSION", "STATE"], rows)


def gift(g: gifting_pb2.Gift) -> str:
    state = enum_name(gifting_pb2.GiftState, g.state, "GIFT_STATE_")
    return (
        f"gift {g.gift_id} ({g.name}) v{g.version}: {count(g.coin_price, 'coin')}, "
        f"creator receives {count(g.diamonds, 'diamond')}, {state}"
    )


def transfer(t: gifting_pb2.GiftTransfer) -> str:
    state = enum_name(gifting_pb2.GiftTransferState, t.state, "GIFT_TRANSFER_STATE_")
    line = (
        f"gift {t.transfer_id}: {t.sender_id} -> {t.recipient_id} on {target(t.target)}: "
        f"{t.gift_name} x{t.quantity} = {count(t.total_coins, 'coin')}, {count(t.total_diamonds, 'diamond')}; {state}"
    )
    if t.failure_reason:
        line += f" ({t.failure_reason})"
    return line


def transfers(rows: Sequence[gifting_pb2.GiftTransfer], next_page_token: str) -> str:
    body = table(
        ["TIME", "GIFT ID", "FROM", "TO", "TARGET", "GIFT", "QTY", "COINS", "DIAMONDS", "STATE"],
        [
            [
                when(t.create_time),
                t.transfer_id,
                t.sender_id,
                t.recipient_id,
                target(t.target),
                t.gift_name,
                t.quantity,
                f"{t.total_coins:,}",
                f"{t.total_diamonds:,}",
                enum_name(gifting_pb2.GiftTransferState, t.state, "GIFT_TRANSFER_STATE_")
                + (f" ({t.failure_reason})" if t.failure_reason else ""),
            ]
            for t in rows
        ],
    )
    return body + page_hint(next_page_token)


def feed_event(event: gifting_pb2.WatchGiftsResponse) -> str:
    t = event.transfer
    combo = f" (combo x{event.combo_count})" if event.combo_count > 1 else ""
    return (
        f"#{event.sequence} {t.sender_id} sent {t.gift_name} x{t.quantity} to {t.recipient_id}{combo}: "
        f"{count(t.total_coins, 'coin')}"
    )


def transfer_records(response: gifting_pb2.ListGiftTransfersResponse) -> str:
    rows = []
    for r in response.transfers:
        t = r.transfer
        step = enum_name(gifting_pb2.GiftTransferStep, r.step, "GIFT_TRANSFER_STEP_")
        rows.append(
            [
                when(t.create_time),
                age_of(t.create_time),
                t.transfer_id,
                t.sender_id,
                t.recipient_id,
                f"{t.gift_name} x{t.quantity}",
                f"{t.total_coins:,}",
                f"{t.total_diamonds:,}",
                enum_name(gifting_pb2.GiftTransferState, t.state, "GIFT_TRANSFER_STATE_"),
                step,
                f"{r.cause}: {r.cause_message}" if r.cause else "",
            ]
        )
    headers = ["TIME", "AGE", "GIFT ID", "FROM", "TO", "GIFT", "COINS", "DIAMONDS", "STATE", "STEP", "CAUSE"]
    return table(headers, rows) + page_hint(response.next_page_token)


def leaderboard(response: gifting_pb2.GetLeaderboardResponse) -> str:
    rows = [[e.rank, e.user_id, f"{e.coins:,}", f"{e.gifts:,}"] for e in response.entries]
    return table(["RANK", "USER", "COINS", "GIFTS"], rows, empty="(no gifts yet)")


# --- payout ---


def destination(d: payout_pb2.PayoutDestination) -> str:
    if not d.kind:
        return "none"
    kind = enum_name(payout_pb2.DestinationKind, d.kind, "DESTINATION_KIND_")
    return f"{kind} {d.account_reference} ({d.currency_code})"


def creator(c: payout_pb2.Creator) -> str:
    kyc = enum_name(payout_pb2.KycStatus, c.kyc_status, "KYC_STATUS_")
    eligible = "eligible" if c.eligible else "not eligible"
    gifting = "gifting enabled" if c.gifting_enabled else "gifting disabled"
    return (
        f"creator {c.creator_id}: {eligible} ({gifting}), KYC {kyc}, country {c.country_code}, "
        f"payouts to {destination(c.destination) if c.HasField('destination') else 'none'}"
    )


def earnings(e: payout_pb2.GetEarningsResponse) -> str:
    return "\n".join(
        [
            f"diamonds: {e.diamond_balance:,} (worth {money(e.cash_value)} at {e.rate.numerator:,} minor units "
            f"per {e.rate.denominator:,} diamonds)",
            f"pending payouts: {count(e.pending_diamonds, 'diamond')}, net {money(e.pending_net)}",
            f"paid out: net {money(e.paid_net)}",
        ]
    )


def diamond_transactions(response: payout_pb2.ListDiamondTransactionsResponse) -> str:
    rows = [
        [
            when(t.create_time),
            enum_name(payout_pb2.DiamondTransactionKind, t.kind, "DIAMOND_TRANSACTION_KIND_"),
            signed(t.diamonds_delta),
            t.reference,
        ]
        for t in response.transactions
    ]
    return table(["TIME", "KIND", "DIAMONDS", "REFERENCE"], rows) + page_hint(response.next_page_token)


def quote(q: payout_pb2.Quote) -> str:
    meets = "meets" if q.meets_minimum else "is BELOW"
    within = "within" if q.within_daily_limit else "OVER"
    return "\n".join(
        [
            f"{count(q.diamonds, 'diamond')} -> gross {money(q.gross)}, fee {money(q.fee)}, net {money(q.net)}",
            f"  net {meets} the minimum payout of {money(q.minimum)}",
            f"  {within} today's limit ({money(q.daily_remaining)} left today)",
        ]
    )


def payout(p: payout_pb2.Payout) -> str:
    state = enum_name(payout_pb2.PayoutState, p.state, "PAYOUT_STATE_")
    line = (
        f"payout {p.payout_id}: {count(p.diamonds, 'diamond')} -> net {money(p.net)} "
        f"(gross {money(p.gross)}, fee {money(p.fee)}) to {destination(p.destination)}: {state}"
    )
    if p.provider_reference:
        line += f", provider reference {p.provider_reference}"
    if p.failure_reason:
        line += f" ({p.failure_reason})"
    return line


def payouts(response: payout_pb2.ListPayoutsResponse) -> str:
    rows = [
        [
            when(p.create_time),
            p.payout_id,
            f"{p.diamonds:,}",
            money(p.net),
            enum_name(payout_pb2.PayoutState, p.state, "PAYOUT_STATE_"),
        ]
        for p in response.payouts
    ]
    return table(["TIME", "PAYOUT", "DIAMONDS", "NET", "STATE"], rows) + page_hint(response.next_page_token)


def creators(response: payout_pb2.ListCreatorsResponse) -> str:
    rows = [
        [
            c.creator_id,
            enum_name(payout_pb2.KycStatus, c.kyc_status, "KYC_STATUS_"),
            "yes" if c.eligible else "no",
            c.country_code,
            destination(c.destination) if c.HasField("destination") else "none",
            when(c.create_time),
        ]
        for c in response.creators
    ]
    return table(["CREATOR", "KYC", "ELIGIBLE", "COUNTRY", "DESTINATION", "SINCE"], rows) + page_hint(
        response.next_page_token
    )


def payouts_by_state(response: payout_pb2.ListPayoutsByStateResponse) -> str:
    rows = [
        [
            when(p.create_time),
            age_of(p.create_time),
            p.payout_id,
            p.creator_id,
            f"{p.diamonds:,}",
            money(p.net),
            enum_name(payout_pb2.PayoutState, p.state, "PAYOUT_STATE_"),
            p.failure_reason,
        ]
        for p in response.payouts
    ]
    headers = ["TIME", "AGE", "PAYOUT", "CREATOR", "DIAMONDS", "NET", "STATE", "WHY"]
    return table(headers, rows) + page_hint(response.next_page_token)


def credits(response: payout_pb2.ListDiamondCreditsResponse) -> str:
    rows = [
        [
            when(b.credit.create_time),
            b.credit.credit_id,
            b.credit.gift_id,
            b.credit.creator_id,
            f"{b.credit.diamonds:,}",
            f"{b.coins:,}",
            f"{b.booked_diamonds:,}",
            f"{b.booked_platform_share:,}",
            b.diamond_transfers,
        ]
        for b in response.credits
    ]
    headers = ["TIME", "CREDIT", "GIFT ID", "CREATOR", "DIAMONDS", "COINS", "BOOKED", "PLATFORM", "TRANSFERS"]
    return table(headers, rows) + page_hint(response.next_page_token)


def payout_books(r: payout_pb2.SummarizeBooksResponse) -> str:
    lines = [
        f"credited: {count(r.diamonds_credited, 'diamond')} in {count(r.credits, 'credit')}, for "
        f"{r.gift_coins:,} coins ({r.gift_promotional_coins:,} promotional); the platform's share "
        f"{r.platform_share:,} coins"
    ]
    for p in r.payouts:
        state = enum_name(payout_pb2.PayoutState, p.state, "PAYOUT_STATE_")
        lines.append(
            f"payouts {state}: {p.payouts:,}, {p.diamonds:,} diamonds, gross {money(p.gross)}, fee {money(p.fee)}, "
            f"net {money(p.net)}"
        )
    lines.append(
        f"now ({when(r.as_of)}): {r.diamonds_outstanding:,} diamonds on creators' balances, "
        f"{r.diamonds_in_payout:,} in payouts in flight"
    )
    return "\n".join(lines)


# --- the reconciliation ---


def reconciliation(report: Report) -> str:
    """The report: what was checked, every discrepancy with its ids and action, the money summary."""
    w, m = report.window, report.money
    lines = [
        f"reconciliation of {w.start.isoformat()} .. {w.end.isoformat()} (as of {report.as_of.isoformat()})",
        f"  gifts: {report.gifts:,} ({report.completed:,} completed, {report.failed:,} failed, "
        f"{report.in_flight:,} in flight); {report.checked:,} gifts, holds and credits checked",
        f"  discrepancies: {len(report.discrepancies)}",
    ]
    for d in report.discrepancies:
        ids = ", ".join(
            f"{name} {value}"
            for name, value in (
                ("hold", d.hold_id),
                ("credit", d.credit_id),
                ("sender", d.sender_id),
                ("recipient", d.recipient_id),
            )
            if value
        )
        lines += [
            f"  - {d.kind} gift {d.gift_id} ({ids}; {age(d.age_seconds)} old): {d.detail}",
            f"    what to do: {d.action}",
        ]
    lines.append("money:")
    lines += [
        f"  fiat in: {t.store} {format_money(t.amount_minor, t.currency)} for {count(t.purchases, 'purchase')}"
        for t in m.takings
    ] or ["  fiat in: none"]
    lines += [
        f"  {f.kind}s: {format_money(f.amount_minor, f.currency)} in {f.refunds:,} "
        f"({f.coins_reclaimed:,} coins taken back, {f.debt_added:,} owed)"
        for f in m.refunds
    ]
    lines += [
        f"  refunds reversed: {format_money(v.amount_minor, v.currency)} in {v.reversals:,} "
        f"({v.coins:,} coins given back)"
        for v in m.reversals
    ]
    lines += [
        f"  coins issued: {m.coins_purchased:,} purchased, {m.coins_granted:,} promotional",
        f"  coins spent on the window's gifts: {m.coins_spent:,} ({m.coins_spent_promotional:,} promotional)",
        f"  diamonds credited for them: {m.diamonds_credited:,}; the platform's share: {m.platform_share:,} coins",
    ]
    for p in m.payouts:
        lines.append(
            f"  payouts {p.state}: {p.payouts:,}, {p.diamonds:,} diamonds, "
            f"gross {format_money(p.gross_minor, p.currency)}, fee {format_money(p.fee_minor, p.currency)}, "
            f"net {format_money(p.net_minor, p.currency)}"
        )
    lines += [
        f"  now: {m.coins_outstanding_now:,} coins outstanding ({m.coins_outstanding_promotional_now:,} promotional, "
        f"{m.coins_held_now:,} held), {m.promotion_budgets_remaining_now:,} in promotion budgets; "
        f"{m.diamonds_outstanding_now:,} diamonds outstanding, {m.diamonds_in_payout_now:,} in payouts",
        f"watermark: {report.watermark.isoformat()} (the next run may start here)",
    ]
    return "\n".join(lines)


# Response type -> its text. A response without an entry falls back to its JSON.
_TEXT: dict[type[Message], Callable[[Any], str]] = {
    wallet_pb2.OpenWalletResponse: lambda r: wallet(r.wallet),
    wallet_pb2.GetWalletResponse: lambda r: wallet(r.wallet),
    wallet_pb2.ListCoinPackagesResponse: coin_packages,
    wallet_pb2.PurchaseCoinsResponse: lambda r: purchase(r.purchase) + "\n" + wallet(r.wallet),
    wallet_pb2.RefundPurchaseResponse: lambda r: (
        f"{purchase(r.purchase)}\n{count(r.coins_reclaimed, 'coin')} reclaimed, "
        f"{count(r.debt_added, 'coin')} added to debt\n{wallet(r.wallet)}"
    ),
    wallet_pb2.CreatePromotionResponse: lambda r: promotion(r.promotion),
    wallet_pb2.ClaimPromotionResponse: lambda r: f"granted {count(r.coins_granted, 'coin')}\n{wallet(r.wallet)}",
    wallet_pb2.ListTransactionsResponse: transactions,
    gifting_pb2.ListGiftsResponse: gifts,
    gifting_pb2.UpsertGiftResponse: lambda r: gift(r.gift),
    gifting_pb2.RetireGiftResponse: lambda r: gift(r.gift),
    gifting_pb2.SendGiftResponse: lambda r: transfer(r.transfer),
    gifting_pb2.GetGiftTransferResponse: lambda r: transfer(r.transfer),
    gifting_pb2.ListSentGiftsResponse: lambda r: transfers(r.transfers, r.next_page_token),
    gifting_pb2.ListReceivedGiftsResponse: lambda r: transfers(r.transfers, r.next_page_token),
    gifting_pb2.WatchGiftsResponse: feed_event,
    gifting_pb2.GetLeaderboardResponse: leaderboard,
    payout_pb2.RegisterCreatorResponse: lambda r: creator(r.creator),
    payout_pb2.SetPayoutDestinationResponse: lambda r: creator(r.creator),
    payout_pb2.VerifyCreatorResponse: lambda r: creator(r.creator),
    payout_pb2.GetEarningsResponse: earnings,
    payout_pb2.ListDiamondTransactionsResponse: diamond_transactions,
    payout_pb2.QuotePayoutResponse: lambda r: quote(r.quote),
    payout_pb2.RequestPayoutResponse: lambda r: payout(r.payout),
    payout_pb2.GetPayoutResponse: lambda r: payout(r.payout),
    payout_pb2.ListPayoutsResponse: payouts,
    wallet_pb2.GetUserWalletResponse: lambda r: wallet(r.wallet),
    wallet_pb2.ListUserTransactionsResponse: transactions,
    wallet_pb2.ListPromotionsResponse: promotions,
    wallet_pb2.ListHoldsResponse: holds,
    wallet_pb2.SummarizeBooksResponse: wallet_books,
    wallet_pb2.ListAuditRecordsResponse: lambda r: audit_records(r.records, r.next_page_token),
    gifting_pb2.ListGiftTransfersResponse: transfer_records,
    gifting_pb2.ListAuditRecordsResponse: lambda r: audit_records(r.records, r.next_page_token),
    payout_pb2.ListCreatorsResponse: creators,
    payout_pb2.ListPayoutsByStateResponse: payouts_by_state,
    payout_pb2.ListDiamondCreditsResponse: credits,
    payout_pb2.SummarizeBooksResponse: payout_books,
    payout_pb2.ListAuditRecordsResponse: lambda r: audit_records(r.records, r.next_page_token),
}


def text(message: Message) -> str:
    describe = _TEXT.get(type(message))
    return describe(message) if describe else json.dumps(to_dict(message), indent=2, sort_keys=True)


def show(message: Message, as_json: bool) -> str:
    return to_json(message) if as_json else text(message)
