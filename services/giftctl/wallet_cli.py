"""`giftctl wallet ...`: coins (giftcoin.wallet.v1.WalletService)."""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from giftcoin.wallet.v1 import wallet_pb2

from services.giftctl import arguments
from services.giftctl.command import (
    OPERATOR_NOTE,
    RpcCommand,
    Who,
    operator_leaf,
    paging,
    set_window,
    stamp,
    summary_request,
    summary_window,
    window,
)
from services.giftctl.session import CliError, Session
from services.runtime.auth import CallerKind

SANDBOX_STORE = "sandbox"
REFUND_KINDS = arguments.Choice(
    {"refund": wallet_pb2.REFUND_KIND_REFUND, "chargeback": wallet_pb2.REFUND_KIND_CHARGEBACK}
)


def sandbox_receipt(
    user_id: str, package_id: str, currency_code: str = "", store_transaction_id: str = ""
) -> wallet_pb2.Receipt:
    """A test-store receipt signed with the sandbox key (GIFTCOIN_WALLET_SANDBOX_RECEIPT_KEY, else the
    dev key), for the package's price, bound to the buyer: what the wallet's receipt tool mints."""
    from services.wallet import receipts  # the wallet's own tool: one definition of the signature

    payload = receipts.mint_receipt(
        package_id=package_id,
        store_transaction_id=store_transaction_id or f"sandbox-{uuid.uuid4()}",
        user_id=user_id,
        currency_code=currency_code or "USD",
    )
    return wallet_pb2.Receipt(store=SANDBOX_STORE, payload=payload)


def open_wallet(session: Session, args: argparse.Namespace) -> wallet_pb2.OpenWalletResponse:
    request = wallet_pb2.OpenWalletRequest(
        request_id=session.request_id(), date_of_birth=args.birth_date, country_code=args.country
    )
    return session.wallet().OpenWallet(request)


def get_wallet(session: Session, _args: argparse.Namespace) -> wallet_pb2.GetWalletResponse:
    return session.wallet().GetWallet(wallet_pb2.GetWalletRequest())


def packages(session: Session, args: argparse.Namespace) -> wallet_pb2.ListCoinPackagesResponse:
    return session.wallet().ListCoinPackages(wallet_pb2.ListCoinPackagesRequest(currency_code=args.currency or ""))


def buy(session: Session, args: argparse.Namespace) -> wallet_pb2.PurchaseCoinsResponse:
    if args.receipt or args.receipt_file:
        receipt = wallet_pb2.Receipt(store=args.store, payload=args.receipt or args.receipt_file)
    else:
        # Under --request-id, the receipt is made from it: the same command replays (the same receipt, so
        # the same request), rather than being refused as a new receipt under a used id.
        derived = f"giftctl-{session.fixed_request_id}" if session.fixed_request_id else ""
        receipt = sandbox_receipt(session.caller.id, args.package, args.currency or "", args.transaction_id or derived)
    request = wallet_pb2.PurchaseCoinsRequest(
        request_id=session.request_id(), package_id=args.package, currency_code=args.currency or "", receipt=receipt
    )
    return session.wallet().PurchaseCoins(request)


def claim(session: Session, args: argparse.Namespace) -> wallet_pb2.ClaimPromotionResponse:
    request = wallet_pb2.ClaimPromotionRequest(request_id=session.request_id(), promotion_id=args.promotion_id)
    return session.wallet().ClaimPromotion(request)


def history(session: Session, args: argparse.Namespace) -> wallet_pb2.ListTransactionsResponse:
    request = wallet_pb2.ListTransactionsRequest(page_size=args.page_size, page_token=args.page_token)
    return session.wallet().ListTransactions(request)


def refund(session: Session, args: argparse.Namespace) -> wallet_pb2.RefundPurchaseResponse:
    request = wallet_pb2.RefundPurchaseRequest(
        request_id=session.request_id(),
        store=args.store,
        store_transaction_id=args.transaction_id,
        kind=args.kind,
    )
    return session.wallet().RefundPurchase(request)


def create_promotion(session: Session, args: argparse.Namespace) -> wallet_pb2.CreatePromotionResponse:
    start = args.starts or datetime.now(UTC)
    end = args.ends or start + timedelta(days=args.days)
    request = wallet_pb2.CreatePromotionRequest(
        request_id=session.request_id(),
        promotion_id=args.promotion_id,
        name=args.name or args.promotion_id,
        coins_per_claim=args.coins,
        budget=args.budget,
        start_time=stamp(start),
        end_time=stamp(end),
    )
    return session.wallet().CreatePromotion(request)


def user_wallet(session: Session, args: argparse.Namespace) -> wallet_pb2.GetUserWalletResponse:
    return session.wallet().GetUserWallet(wallet_pb2.GetUserWalletRequest(user_id=args.user_id))


def user_history(session: Session, args: argparse.Namespace) -> wallet_pb2.ListUserTransactionsResponse:
    request = wallet_pb2.ListUserTransactionsRequest(
        user_id=args.user_id, page_size=args.page_size, page_token=args.page_token
    )
    return session.wallet().ListUserTransactions(request)


def promotions(session: Session, args: argparse.Namespace) -> wallet_pb2.ListPromotionsResponse:
    request = wallet_pb2.ListPromotionsRequest(page_size=args.page_size, page_token=args.page_token)
    return session.wallet().ListPromotions(request)


def holds(session: Session, args: argparse.Namespace) -> wallet_pb2.ListHoldsResponse:
    request = wallet_pb2.ListHoldsRequest(gift_ids=args.gift, page_size=args.page_size, page_token=args.page_token)
    set_window(request, args)
    return session.wallet().ListHolds(request)


def books(session: Session, args: argparse.Namespace) -> wallet_pb2.SummarizeBooksResponse:
    return session.wallet().SummarizeBooks(summary_request(wallet_pb2.SummarizeBooksRequest(), args))


def audit(session: Session, args: argparse.Namespace) -> wallet_pb2.ListAuditRecordsResponse:
    request = wallet_pb2.ListAuditRecordsRequest(page_size=args.page_size, page_token=args.page_token)
    return session.wallet().ListAuditRecords(request)


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    def leaf(name: str, summary: str, command: RpcCommand, details: str = "") -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=parents, help=summary, description=details or summary)
        parser.set_defaults(rpc=command, prog=parser.prog)
        return parser

    p = leaf("open", "open your wallet", RpcCommand("wallet", "OpenWallet", Who.USER, open_wallet))
    p.add_argument("--birth-date", type=arguments.birth_date, required=True, metavar="YYYY-MM-DD")
    p.add_argument("--country", type=arguments.country, required=True, metavar="CC", help="ISO 3166 alpha-2, e.g. US")

    leaf("get", "your wallet: status and balance", RpcCommand("wallet", "GetWallet", Who.USER, get_wallet))

    p = leaf("packages", "the coin packages on sale", RpcCommand("wallet", "ListCoinPackages", Who.ANYONE, packages))
    p.add_argument("--currency", type=arguments.currency, default=None, help="ISO 4217 (default USD)")

    p = leaf(
        "buy",
        "buy a coin package",
        RpcCommand("wallet", "PurchaseCoins", Who.USER, buy),
        "Buy a coin package. Without --receipt, giftctl mints a sandbox store receipt for you "
        "(the wallet's receipt tool), as an app would get from a store's test mode.",
    )
    p.add_argument("--package", required=True, help="a package id from `giftctl wallet packages`, e.g. coins_700")
    p.add_argument("--currency", type=arguments.currency, default=None, help="the currency charged (default USD)")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--receipt", default="", help="a store receipt payload, verbatim (default: mint a sandbox one)")
    given.add_argument(
        "--receipt-file",
        type=_file_text,
        default=None,
        metavar="FILE",
        help="the receipt payload from a file: an App Store signed transaction (JWS) or a Google Play purchase JSON",
    )
    p.add_argument(
        "--store",
        default=SANDBOX_STORE,
        help="the store that issued the receipt: app_store, google_play or sandbox (default sandbox)",
    )
    p.add_argument(
        "--transaction-id",
        default="",
        help="the store transaction id for a minted sandbox receipt (default: a fresh one; reuse it to see a "
        "replayed receipt refused)",
    )

    p = leaf("claim", "claim a promotion's coins", RpcCommand("wallet", "ClaimPromotion", Who.USER, claim))
    p.add_argument("promotion_id", metavar="PROMOTION")

    p = leaf(
        "history", "your coin transactions, newest first", RpcCommand("wallet", "ListTransactions", Who.USER, history)
    )
    paging(p)

    p = leaf(
        "refund",
        "[operator] refund or charge back a purchase",
        RpcCommand("wallet", "RefundPurchase", Who.OPERATOR, refund),
        OPERATOR_NOTE + "What the store's webhook does: takes the purchase's coins back (or records a debt).",
    )
    p.add_argument("transaction_id", metavar="STORE_TRANSACTION_ID")
    p.add_argument("--store", default=SANDBOX_STORE, help="default sandbox")
    p.add_argument("--kind", type=REFUND_KINDS, default=wallet_pb2.REFUND_KIND_REFUND, metavar=REFUND_KINDS.names)

    p = commands.add_parser(
        "account-token",
        parents=parents,
        help="the account token your store purchases must carry",
        description="Print the account token of the --as user: the UUID an app passes to the App Store "
        "(appAccountToken) or Google Play (obfuscatedAccountId), so that the purchase credits only this user. "
        "Computed here; calls nothing.",
    )
    p.set_defaults(handler=_account_token, prog=p.prog)

    p = commands.add_parser(
        "notify",
        parents=parents,
        help="replay a store notification file at the wallet's notifications endpoint",
        description="POST a file, as the store would, to the wallet's store-notifications endpoint "
        "(GIFTCOIN_WALLET_STORE_NOTIFICATIONS_PORT): an App Store Server Notification v2 body "
        '({"signedPayload": ...}) or a Google Play RTDN Pub/Sub push. Prints the wallet\'s answer.',
    )
    p.add_argument("file", type=_file_bytes, metavar="FILE", help="the request body, as the store sent it")
    p.add_argument("--store", required=True, choices=sorted(NOTIFICATION_PATHS), help="which store sent it")
    p.add_argument(
        "--url",
        default=os.environ.get("GIFTCOIN_WALLET_NOTIFICATIONS_URL", "http://127.0.0.1:50061"),
        help="the endpoint's root (default $GIFTCOIN_WALLET_NOTIFICATIONS_URL, else http://127.0.0.1:50061)",
    )
    p.add_argument("--push-token", default="", help="Google Play: the push subscription's token")
    p.set_defaults(handler=_notify)

    promotion = commands.add_parser("promotion", help="[operator] promotions", description="[operator] promotions")
    promotion_commands = promotion.add_subparsers(metavar="COMMAND", required=True)
    p = operator_leaf(
        promotion_commands,
        parents,
        "create",
        "[operator] create a time-limited promotion",
        RpcCommand("wallet", "CreatePromotion", Who.OPERATOR, create_promotion),
        "Create a time-limited promotion granting coins once per user, within a budget.",
    )
    p.add_argument("promotion_id", metavar="PROMOTION", help="a stable id, e.g. welcome-2026")
    p.add_argument("--name", default="", help="shown to users (default: the id)")
    p.add_argument("--coins", type=arguments.integer(1), required=True, help="coins granted per claim")
    p.add_argument("--budget", type=arguments.integer(1), required=True, help="coins the promotion may grant in all")
    p.add_argument("--starts", type=arguments.timestamp, help="ISO 8601 (default now)")
    p.add_argument("--ends", type=arguments.timestamp, help="ISO 8601 (default: --days after the start)")
    p.add_argument("--days", type=arguments.integer(1), default=7, help="length when --ends is not given (default 7)")
    paging(
        operator_leaf(
            promotion_commands,
            parents,
            "list",
            "[operator] every promotion and what is left of its budget",
            RpcCommand("wallet", "ListPromotions", Who.OPERATOR, promotions),
        )
    )

    user_group = commands.add_parser("user", help="[operator] any user's wallet", description="[operator] wallets")
    user_commands = user_group.add_subparsers(metavar="COMMAND", required=True)
    p = operator_leaf(
        user_commands,
        parents,
        "get",
        "[operator] a user's wallet: status, balance, debt",
        RpcCommand("wallet", "GetUserWallet", Who.OPERATOR, user_wallet),
    )
    p.add_argument("user_id", metavar="USER")
    p = operator_leaf(
        user_commands,
        parents,
        "history",
        "[operator] a user's coin transactions, newest first",
        RpcCommand("wallet", "ListUserTransactions", Who.OPERATOR, user_history),
    )
    p.add_argument("user_id", metavar="USER")
    paging(p)

    p = leaf(
        "holds",
        "[operator] holds by create time, with what the ledger spent for each",
        RpcCommand("wallet", "ListHolds", Who.OPERATOR, holds),
        OPERATOR_NOTE + "Holds made in a window (--since, --until), or the holds of given gifts (--gift), "
        "oldest first; what the reconciler reads.",
    )
    window(p, "holds")
    p.add_argument("--gift", action="append", default=[], metavar="GIFT_ID", help="a gift's hold (repeatable)")
    paging(p)

    p = leaf(
        "books",
        "[operator] fiat taken, refunds, coins issued over a window; coins outstanding now",
        RpcCommand("wallet", "SummarizeBooks", Who.OPERATOR, books),
    )
    summary_window(p)

    paging(
        leaf(
            "audit",
            "[operator] the audit trail of refunds and promotions, newest first",
            RpcCommand("wallet", "ListAuditRecords", Who.OPERATOR, audit),
        )
    )


NOTIFICATION_PATHS = {"app_store": "/app-store/notifications", "google_play": "/google-play/notifications"}


def _file_text(path: str) -> str:
    return _file_bytes(path).decode(errors="replace").strip()


def _file_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None


def _account_token(args: argparse.Namespace) -> int:
    from services.wallet.model import account_token  # the wallet's own rule: one definition

    if args.identity is None or args.identity.kind is not CallerKind.USER:
        raise CliError(f"{args.prog}: acts for a user: pass --as user:<id>", exit_status=2)
    print(account_token(args.identity.id))
    return 0


def _notify(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/") + NOTIFICATION_PATHS[args.store]
    if args.push_token:
        url += "?" + urllib.parse.urlencode({"token": args.push_token})
    request = urllib.request.Request(url, args.file, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as err:
        raise CliError(
            f"the wallet refused the notification: HTTP {err.code} {err.read().decode(errors='replace')}"
        ) from None
    except OSError as exc:
        raise CliError(f"no wallet notifications endpoint at {args.url}: {exc}") from None
