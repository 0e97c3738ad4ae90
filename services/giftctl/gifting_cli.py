"""`giftctl gifting ...`: gifts (giftcoin.gifting.v1.GiftingService)."""

from __future__ import annotations

import argparse
from typing import Any

from giftcoin.gifting.v1 import gifting_pb2

from services.giftctl import arguments
from services.giftctl.command import RpcCommand, Who, operator_leaf, paging, set_window, window
from services.giftctl.session import Session

WINDOWS = arguments.Choice(
    {
        "target": gifting_pb2.LEADERBOARD_WINDOW_TARGET,
        "day": gifting_pb2.LEADERBOARD_WINDOW_DAY,
        "all-time": gifting_pb2.LEADERBOARD_WINDOW_ALL_TIME,
    }
)


# A gift transfer's state as operators name it: "failing" is a pending gift whose hold is being given back.
STATES = arguments.Choice({"pending": 1, "failing": 2, "failed": 3, "completed": 4})
_STATE_FILTERS = {
    1: ([gifting_pb2.GIFT_TRANSFER_STATE_PENDING], []),
    2: ([], [gifting_pb2.GIFT_TRANSFER_STEP_FAILING]),
    3: ([gifting_pb2.GIFT_TRANSFER_STATE_FAILED], []),
    4: ([gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED], []),
}


def stream_or_video(stream: str | None, video: str | None) -> gifting_pb2.Target:
    if video:
        return gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_VIDEO, id=video)
    return gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id=stream or "")


def add_target(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--stream", metavar="STREAM_ID", help="a live stream")
    group.add_argument("--video", metavar="VIDEO_ID", help="a video")


def gifts(session: Session, _args: argparse.Namespace) -> gifting_pb2.ListGiftsResponse:
    return session.gifting().ListGifts(gifting_pb2.ListGiftsRequest())


def send(session: Session, args: argparse.Namespace) -> gifting_pb2.SendGiftResponse:
    request = gifting_pb2.SendGiftRequest(
        request_id=session.request_id(),
        gift_id=args.gift_id,
        quantity=args.quantity,
        recipient_id=args.to,
        target=stream_or_video(args.stream, args.video),
    )
    return session.gifting().SendGift(request)


def transfer(session: Session, args: argparse.Namespace) -> gifting_pb2.GetGiftTransferResponse:
    return session.gifting().GetGiftTransfer(gifting_pb2.GetGiftTransferRequest(transfer_id=args.transfer_id))


def sent(session: Session, args: argparse.Namespace) -> gifting_pb2.ListSentGiftsResponse:
    request = gifting_pb2.ListSentGiftsRequest(page_size=args.page_size, page_token=args.page_token)
    return session.gifting().ListSentGifts(request)


def received(session: Session, args: argparse.Namespace) -> gifting_pb2.ListReceivedGiftsResponse:
    request = gifting_pb2.ListReceivedGiftsRequest(page_size=args.page_size, page_token=args.page_token)
    return session.gifting().ListReceivedGifts(request)


def leaderboard(session: Session, args: argparse.Namespace) -> gifting_pb2.GetLeaderboardResponse:
    request = gifting_pb2.GetLeaderboardRequest(limit=args.limit)
    if args.creator:
        request.creator_id = args.creator
        request.window = args.window or gifting_pb2.LEADERBOARD_WINDOW_ALL_TIME
    else:
        request.window = args.window or gifting_pb2.LEADERBOARD_WINDOW_TARGET
        request.target.CopyFrom(stream_or_video(args.stream, args.video))
    return session.gifting().GetLeaderboard(request)


def upsert_gift(session: Session, args: argparse.Namespace) -> gifting_pb2.UpsertGiftResponse:
    request = gifting_pb2.UpsertGiftRequest(
        request_id=session.request_id(),
        gift_id=args.gift_id,
        name=args.name,
        coin_price=args.price,
        diamonds=args.diamonds,
    )
    return session.gifting().UpsertGift(request)


def retire_gift(session: Session, args: argparse.Namespace) -> gifting_pb2.RetireGiftResponse:
    request = gifting_pb2.RetireGiftRequest(request_id=session.request_id(), gift_id=args.gift_id)
    return session.gifting().RetireGift(request)


def transfers(session: Session, args: argparse.Namespace) -> gifting_pb2.ListGiftTransfersResponse:
    states, steps = _STATE_FILTERS[args.state] if args.state else ([], [])
    request = gifting_pb2.ListGiftTransfersRequest(
        states=states, steps=steps, transfer_ids=args.id, page_size=args.page_size, page_token=args.page_token
    )
    set_window(request, args)
    return session.gifting().ListGiftTransfers(request)


def audit(session: Session, args: argparse.Namespace) -> gifting_pb2.ListAuditRecordsResponse:
    request = gifting_pb2.ListAuditRecordsRequest(page_size=args.page_size, page_token=args.page_token)
    return session.gifting().ListAuditRecords(request)


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    def leaf(name: str, summary: str, command: RpcCommand, details: str = "") -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=parents, help=summary, description=details or summary)
        parser.set_defaults(rpc=command, prog=parser.prog)
        return parser

    leaf("gifts", "the gift catalogue", RpcCommand("gifting", "ListGifts", Who.ANYONE, gifts))

    p = leaf(
        "send",
        "send a gift to a creator on a stream or video",
        RpcCommand("gifting", "SendGift", Who.USER, send),
        "Send a gift (a quantity of one gift is one send: a combo) to a creator on a live stream or a video.",
    )
    p.add_argument("gift_id", metavar="GIFT", help="a gift id from `giftctl gifting gifts`, e.g. rose")
    p.add_argument("--to", required=True, metavar="CREATOR_ID", help="the creator's user id")
    p.add_argument("--quantity", type=arguments.integer(1, 9999), default=1, help="a combo of this many (default 1)")
    add_target(p)

    p = leaf("transfer", "one gift you sent or received", RpcCommand("gifting", "GetGiftTransfer", Who.USER, transfer))
    p.add_argument("transfer_id", metavar="GIFT_ID", help="the id `send` printed")

    paging(leaf("sent", "gifts you sent, newest first", RpcCommand("gifting", "ListSentGifts", Who.USER, sent)))
    paging(
        leaf(
            "received",
            "gifts you received, newest first",
            RpcCommand("gifting", "ListReceivedGifts", Who.USER, received),
        )
    )

    p = leaf(
        "leaderboard",
        "top gifters of a stream, video or creator",
        RpcCommand("gifting", "GetLeaderboard", Who.ANYONE, leaderboard),
    )
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--stream", metavar="STREAM_ID")
    group.add_argument("--video", metavar="VIDEO_ID")
    group.add_argument("--creator", metavar="CREATOR_ID")
    p.add_argument(
        "--window",
        type=WINDOWS,
        metavar=WINDOWS.names,
        help="target: the whole stream or video (default for --stream/--video); day: today (UTC); "
        "all-time (default for --creator)",
    )
    p.add_argument("--limit", type=arguments.integer(0, 100), default=0, help="entries (default 10)")

    catalogue = commands.add_parser("gift", help="[operator] catalogue changes", description="[operator] catalogue")
    gift_commands = catalogue.add_subparsers(metavar="COMMAND", required=True)
    p = operator_leaf(
        gift_commands,
        parents,
        "upsert",
        "[operator] create a gift or change it",
        RpcCommand("gifting", "UpsertGift", Who.OPERATOR, upsert_gift),
        "Create a gift or change it; a new price is a new version.",
    )
    p.add_argument("gift_id", metavar="GIFT")
    p.add_argument("--name", required=True)
    p.add_argument("--price", type=arguments.integer(1), required=True, help="coins per gift")
    p.add_argument("--diamonds", type=arguments.integer(0), default=0, help="per gift (default: the standard share)")
    p = operator_leaf(
        gift_commands,
        parents,
        "retire",
        "[operator] take a gift off sale",
        RpcCommand("gifting", "RetireGift", Who.OPERATOR, retire_gift),
    )
    p.add_argument("gift_id", metavar="GIFT")

    p = operator_leaf(
        commands,
        parents,
        "transfers",
        "[operator] any gifts by state (pending, failing, failed), with cause and age, oldest first",
        RpcCommand("gifting", "ListGiftTransfers", Who.OPERATOR, transfers),
        "Gifts by state, recorded in a window (--since, --until) or given by id (--id), oldest first, each "
        "with its saga's step, why it failed (or is failing) and its age.",
    )
    p.add_argument("--state", type=STATES, metavar=STATES.names, help="default: any")
    window(p, "gifts")
    p.add_argument("--id", action="append", default=[], metavar="GIFT_ID", help="a gift (repeatable)")
    paging(p)

    paging(
        operator_leaf(
            commands,
            parents,
            "audit",
            "[operator] the audit trail of catalogue changes, newest first",
            RpcCommand("gifting", "ListAuditRecords", Who.OPERATOR, audit),
        )
    )
