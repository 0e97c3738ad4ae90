"""Leaderboards (per target and per creator, over a window) and the histories of sent and received gifts."""

from __future__ import annotations

import grpc
from giftcoin.gifting.v1 import gifting_pb2

from tests.gifting.harness import STREAM, Suite, refused
from tests.support.identity import user

OTHER_STREAM = gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id="stream-2")
VIDEO = gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_VIDEO, id="video-1")
TARGET, DAY, ALL_TIME = (
    gifting_pb2.LEADERBOARD_WINDOW_TARGET,
    gifting_pb2.LEADERBOARD_WINDOW_DAY,
    gifting_pb2.LEADERBOARD_WINDOW_ALL_TIME,
)


def board(
    suite: Suite,
    window: gifting_pb2.LeaderboardWindow.ValueType,
    target: gifting_pb2.Target | None = None,
    creator: str = "",
    limit: int = 0,
) -> list[tuple[int, str, int, int]]:
    request = gifting_pb2.GetLeaderboardRequest(window=window, creator_id=creator, limit=limit)
    if target is not None:
        request.target.CopyFrom(target)
    entries = suite.clients.call("GetLeaderboard", request, user("anyone")).entries
    return [(e.rank, e.user_id, e.coins, e.gifts) for e in entries]


def test_leaderboards_rank_gifters_by_coins_on_completed_gifts(suite: Suite) -> None:
    c = suite.clients
    for viewer in ("vince", "wendy", "xena"):
        c.viewer(viewer)
    c.creator("carol")
    c.creator("dora")
    c.send("vince", gift_id="confetti", quantity=3, recipient_id="carol")  # 300 on stream-1
    c.send("wendy", gift_id="doughnut", quantity=5, recipient_id="carol")  # 150 on stream-1
    c.send("wendy", gift_id="confetti", quantity=2, recipient_id="carol", target=OTHER_STREAM)  # 200
    c.send("xena", gift_id="money_gun", recipient_id="dora", target=VIDEO)  # 500, another creator
    refused(lambda: c.send("xena", gift_id="galaxy", recipient_id="carol"))  # failed: counts nowhere

    assert board(suite, TARGET, STREAM) == [(1, "vince", 300, 3), (2, "wendy", 150, 5)]
    assert board(suite, ALL_TIME, OTHER_STREAM) == [(1, "wendy", 200, 2)]
    assert board(suite, ALL_TIME, creator="carol") == [(1, "wendy", 350, 7), (2, "vince", 300, 3)]
    assert board(suite, DAY, creator="carol", limit=1) == [(1, "wendy", 350, 7)]
    assert board(suite, ALL_TIME, creator="dora") == board(suite, TARGET, VIDEO) == [(1, "xena", 500, 1)]

    suite.clock.advance(days=1)  # a new UTC day
    c.send("vince", gift_id="doughnut", recipient_id="carol")
    assert board(suite, DAY, creator="carol") == [(1, "vince", 30, 1)]
    assert board(suite, DAY, STREAM) == [(1, "vince", 30, 1)]
    assert board(suite, TARGET, STREAM) == [(1, "vince", 330, 4), (2, "wendy", 150, 5)]
    assert board(suite, ALL_TIME, creator="nobody") == []


def test_leaderboard_requests_name_what_is_wrong(suite: Suite) -> None:
    def fields(request: gifting_pb2.GetLeaderboardRequest) -> set[str]:
        error = refused(lambda: suite.clients.call("GetLeaderboard", request, user("anyone")))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        return {v.field for v in error.violations}

    assert fields(gifting_pb2.GetLeaderboardRequest(window=TARGET)) == {"target"}
    assert fields(gifting_pb2.GetLeaderboardRequest(target=STREAM, creator_id="carol", window=DAY)) == {"target"}
    assert fields(gifting_pb2.GetLeaderboardRequest(creator_id="carol", window=TARGET)) == {"window"}
    assert fields(gifting_pb2.GetLeaderboardRequest(target=STREAM, limit=-1)) == {"window", "limit"}


def test_histories_are_newest_first_in_pages_and_the_creator_sees_only_what_it_received(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    sent = []
    for gift in ("rose", "finger_heart", "doughnut", "confetti"):
        sent.append(c.send("vince", gift_id=gift, quantity=2, recipient_id="carol").transfer_id)
        suite.clock.advance(seconds=1)
    failed = refused(lambda: c.send("vince", gift_id="lion", recipient_id="carol")).metadata["transfer_id"]

    def pages(method: str, caller: str, size: int) -> list[list[str]]:
        listed, token = [], ""
        while True:
            request = getattr(gifting_pb2, f"{method}Request")(page_size=size, page_token=token)
            response = c.call(method, request, user(caller))
            listed.append([t.transfer_id for t in response.transfers])
            token = response.next_page_token
            if not token:
                return listed

    assert pages("ListSentGifts", "vince", 2) == [[failed, sent[3]], [sent[2], sent[1]], [sent[0]]]
    assert pages("ListReceivedGifts", "carol", 3) == [[sent[3], sent[2], sent[1]], [sent[0]]]
    assert pages("ListReceivedGifts", "vince", 0) == [[]]
    assert pages("ListSentGifts", "carol", 0) == [[]]

    first = c.call("ListSentGifts", gifting_pb2.ListSentGiftsRequest(page_size=1), user("vince"))
    foreign = gifting_pb2.ListReceivedGiftsRequest(page_token=first.next_page_token)
    assert [v.field for v in refused(lambda: c.call("ListReceivedGifts", foreign, user("carol"))).violations] == [
        "page_token"
    ]
    garbage = gifting_pb2.ListSentGiftsRequest(page_token="not-a-token", page_size=-1)
    error = refused(lambda: c.call("ListSentGifts", garbage, user("vince")))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.violations[0].field == "page_size"
    garbage.page_size = 0
    assert refused(lambda: c.call("ListSentGifts", garbage, user("vince"))).violations[0].field == "page_token"
