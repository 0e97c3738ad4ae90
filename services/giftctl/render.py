"""Readable text for the services' messages, and JSON for machines.

Amounts stay integers all the way to the screen: money is printed from minor units with integer
division, never through a float.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any

from giftcoin.common.v1 import common_pb2
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.payout.v1 import payout_pb2
from giftcoin.wallet.v1 import wallet_pb2
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

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


def transactions(response: wallet_pb2.ListTransactionsResponse) -> str:
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
}


def text(message: Message) -> str:
    describe = _TEXT.get(type(message))
    return describe(message) if describe else json.dumps(to_dict(message), indent=2, sort_keys=True)


def show(message: Message, as_json: bool) -> str:
    return to_json(message) if as_json else text(message)
