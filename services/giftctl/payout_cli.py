"""`giftctl payout ...`: creators' diamonds and cash-outs (giftcoin.payout.v1.PayoutService)."""

from __future__ import annotations

import argparse
from typing import Any

from giftcoin.payout.v1 import payout_pb2

from services.giftctl import arguments
from services.giftctl.command import (
    RpcCommand,
    Who,
    operator_leaf,
    paging,
    set_window,
    summary_request,
    summary_window,
    window,
)
from services.giftctl.session import Session

DESTINATIONS = arguments.Choice(
    {
        "sandbox": payout_pb2.DESTINATION_KIND_SANDBOX,
        "bank": payout_pb2.DESTINATION_KIND_BANK_ACCOUNT,
        "paypal": payout_pb2.DESTINATION_KIND_PAYPAL,
    }
)
STATES = arguments.Choice(
    {
        "requested": payout_pb2.PAYOUT_STATE_REQUESTED,
        "processing": payout_pb2.PAYOUT_STATE_PROCESSING,
        "paid": payout_pb2.PAYOUT_STATE_PAID,
        "failed": payout_pb2.PAYOUT_STATE_FAILED,
    }
)
KYC = arguments.Choice(
    {
        "verified": payout_pb2.KYC_STATUS_VERIFIED,
        "rejected": payout_pb2.KYC_STATUS_REJECTED,
        "unverified": payout_pb2.KYC_STATUS_UNVERIFIED,
    }
)


def register_creator(session: Session, args: argparse.Namespace) -> payout_pb2.RegisterCreatorResponse:
    request = payout_pb2.RegisterCreatorRequest(
        request_id=session.request_id(), date_of_birth=args.birth_date, country_code=args.country
    )
    return session.payout().RegisterCreator(request)


def set_destination(session: Session, args: argparse.Namespace) -> payout_pb2.SetPayoutDestinationResponse:
    request = payout_pb2.SetPayoutDestinationRequest(
        request_id=session.request_id(),
        destination=payout_pb2.PayoutDestination(
            kind=args.kind, account_reference=args.account, currency_code=args.currency
        ),
    )
    return session.payout().SetPayoutDestination(request)


def verify_creator(session: Session, args: argparse.Namespace) -> payout_pb2.VerifyCreatorResponse:
    request = payout_pb2.VerifyCreatorRequest(
        request_id=session.request_id(), creator_id=args.creator_id, kyc_status=args.status
    )
    return session.payout().VerifyCreator(request)


def earnings(session: Session, _args: argparse.Namespace) -> payout_pb2.GetEarningsResponse:
    return session.payout().GetEarnings(payout_pb2.GetEarningsRequest())


def diamonds(session: Session, args: argparse.Namespace) -> payout_pb2.ListDiamondTransactionsResponse:
    request = payout_pb2.ListDiamondTransactionsRequest(page_size=args.page_size, page_token=args.page_token)
    return session.payout().ListDiamondTransactions(request)


def quote(session: Session, args: argparse.Namespace) -> payout_pb2.QuotePayoutResponse:
    return session.payout().QuotePayout(payout_pb2.QuotePayoutRequest(diamonds=args.diamonds))


def request_payout(session: Session, args: argparse.Namespace) -> payout_pb2.RequestPayoutResponse:
    request = payout_pb2.RequestPayoutRequest(request_id=session.request_id(), diamonds=args.diamonds)
    return session.payout().RequestPayout(request)


def get_payout(session: Session, args: argparse.Namespace) -> payout_pb2.GetPayoutResponse:
    return session.payout().GetPayout(payout_pb2.GetPayoutRequest(payout_id=args.payout_id))


def list_payouts(session: Session, args: argparse.Namespace) -> payout_pb2.ListPayoutsResponse:
    request = payout_pb2.ListPayoutsRequest(page_size=args.page_size, page_token=args.page_token)
    return session.payout().ListPayouts(request)


def creators(session: Session, args: argparse.Namespace) -> payout_pb2.ListCreatorsResponse:
    request = payout_pb2.ListCreatorsRequest(kyc_status=args.kyc, page_size=args.page_size, page_token=args.page_token)
    return session.payout().ListCreators(request)


def payouts_by_state(session: Session, args: argparse.Namespace) -> payout_pb2.ListPayoutsByStateResponse:
    request = payout_pb2.ListPayoutsByStateRequest(
        states=args.state, page_size=args.page_size, page_token=args.page_token
    )
    return session.payout().ListPayoutsByState(request)


def credits(session: Session, args: argparse.Namespace) -> payout_pb2.ListDiamondCreditsResponse:
    request = payout_pb2.ListDiamondCreditsRequest(
        gift_ids=args.gift, page_size=args.page_size, page_token=args.page_token
    )
    set_window(request, args)
    return session.payout().ListDiamondCredits(request)


def books(session: Session, args: argparse.Namespace) -> payout_pb2.SummarizeBooksResponse:
    return session.payout().SummarizeBooks(summary_request(payout_pb2.SummarizeBooksRequest(), args))


def audit(session: Session, args: argparse.Namespace) -> payout_pb2.ListAuditRecordsResponse:
    request = payout_pb2.ListAuditRecordsRequest(page_size=args.page_size, page_token=args.page_token)
    return session.payout().ListAuditRecords(request)


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    def leaf(name: str, summary: str, command: RpcCommand, details: str = "") -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=parents, help=summary, description=details or summary)
        parser.set_defaults(rpc=command, prog=parser.prog)
        return parser

    p = leaf("register", "become a creator", RpcCommand("payout", "RegisterCreator", Who.USER, register_creator))
    p.add_argument("--birth-date", type=arguments.birth_date, required=True, metavar="YYYY-MM-DD")
    p.add_argument("--country", type=arguments.country, required=True, metavar="CC", help="ISO 3166 alpha-2, e.g. US")

    p = leaf(
        "destination",
        "set where your payouts go",
        RpcCommand("payout", "SetPayoutDestination", Who.USER, set_destination),
        "Set where your payouts go. The sandbox provider's account says what it does: "
        "succeed, fail, or delay:<seconds>.",
    )
    p.add_argument("--kind", type=DESTINATIONS, default=payout_pb2.DESTINATION_KIND_SANDBOX, metavar=DESTINATIONS.names)
    p.add_argument("--account", required=True, help="IBAN, PayPal id, or the sandbox behaviour (succeed)")
    p.add_argument("--currency", type=arguments.currency, default="USD", help="paid out in (default USD)")

    leaf(
        "earnings",
        "your diamonds, their cash value, pending and paid payouts",
        RpcCommand("payout", "GetEarnings", Who.USER, earnings),
    )
    paging(
        leaf(
            "diamonds",
            "your diamond history, newest first",
            RpcCommand("payout", "ListDiamondTransactions", Who.USER, diamonds),
        )
    )

    p = leaf("quote", "what a payout would pay", RpcCommand("payout", "QuotePayout", Who.USER, quote))
    p.add_argument("--diamonds", type=arguments.integer(0), default=0, help="to cash out (default: the whole balance)")

    p = leaf("request", "cash out diamonds", RpcCommand("payout", "RequestPayout", Who.USER, request_payout))
    p.add_argument("--diamonds", type=arguments.integer(0), default=0, help="to cash out (default: the whole balance)")

    p = leaf("payout", "one of your payouts", RpcCommand("payout", "GetPayout", Who.USER, get_payout))
    p.add_argument("payout_id", metavar="PAYOUT_ID")

    paging(leaf("payouts", "your payouts, newest first", RpcCommand("payout", "ListPayouts", Who.USER, list_payouts)))

    creator = commands.add_parser("creator", help="[operator] creators", description="[operator] creators")
    creator_commands = creator.add_subparsers(metavar="COMMAND", required=True)
    p = operator_leaf(
        creator_commands,
        parents,
        "verify",
        "[operator] record a creator's identity verification (KYC)",
        RpcCommand("payout", "VerifyCreator", Who.OPERATOR, verify_creator),
        "Record the result of a creator's identity verification (KYC).",
    )
    p.add_argument("creator_id", metavar="CREATOR_ID")
    p.add_argument("--status", type=KYC, default=payout_pb2.KYC_STATUS_VERIFIED, metavar=KYC.names)
    p = operator_leaf(
        creator_commands,
        parents,
        "list",
        "[operator] creators by KYC status (unverified: awaiting verification), by id",
        RpcCommand("payout", "ListCreators", Who.OPERATOR, creators),
    )
    p.add_argument("--kyc", type=KYC, default=payout_pb2.KYC_STATUS_UNSPECIFIED, metavar=KYC.names, help="default: any")
    paging(p)

    p = operator_leaf(
        commands,
        parents,
        "all-payouts",
        "[operator] every creator's payouts by state, oldest first",
        RpcCommand("payout", "ListPayoutsByState", Who.OPERATOR, payouts_by_state),
    )
    p.add_argument("--state", type=STATES, action="append", default=[], metavar=STATES.names, help="repeatable")
    paging(p)

    p = operator_leaf(
        commands,
        parents,
        "credits",
        "[operator] diamond credits by create time, with what the ledger booked for each",
        RpcCommand("payout", "ListDiamondCredits", Who.OPERATOR, credits),
        "Credits made in a window (--since, --until), or those of given gifts (--gift), oldest first; what "
        "the reconciler reads.",
    )
    window(p, "credits")
    p.add_argument("--gift", action="append", default=[], metavar="GIFT_ID", help="a gift's credit (repeatable)")
    paging(p)

    p = operator_leaf(
        commands,
        parents,
        "books",
        "[operator] diamonds credited, the platform's share, payouts over a window; diamonds outstanding now",
        RpcCommand("payout", "SummarizeBooks", Who.OPERATOR, books),
    )
    summary_window(p)

    paging(
        operator_leaf(
            commands,
            parents,
            "audit",
            "[operator] the audit trail of KYC decisions, newest first",
            RpcCommand("payout", "ListAuditRecords", Who.OPERATOR, audit),
        )
    )
