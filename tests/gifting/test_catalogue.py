"""The gift catalogue: SPEC's defaults, versions on a price change, retiring, and what a sent gift keeps."""

from __future__ import annotations

import grpc
from giftcoin.gifting.v1 import gifting_pb2

from tests.gifting.harness import OPERATOR, Suite, new_id, refused
from tests.support.identity import as_caller, service, user

DEFAULTS = [
    ("rose", "Rose", 1),
    ("finger_heart", "Finger Heart", 5),
    ("doughnut", "Doughnut", 30),
    ("confetti", "Confetti", 100),
    ("money_gun", "Money Gun", 500),
    ("galaxy", "Galaxy", 1000),
    ("sports_car", "Sports Car", 7000),
    ("lion", "Lion", 29999),
    ("universe", "Universe", 34999),
]


def catalogue(suite: Suite) -> list[gifting_pb2.Gift]:
    return list(suite.clients.call("ListGifts", gifting_pb2.ListGiftsRequest(), user("anyone")).gifts)


def test_the_default_catalogue_cheapest_first_with_half_the_price_in_diamonds(suite: Suite) -> None:
    gifts = catalogue(suite)
    assert [(g.gift_id, g.name, g.coin_price) for g in gifts] == DEFAULTS
    assert [g.diamonds for g in gifts] == [price // 2 for _, _, price in DEFAULTS]  # Lion: 14999, floored
    assert {g.diamond_share_bps for g in gifts} == {5000}
    assert {(g.version, g.state) for g in gifts} == {(1, gifting_pb2.GIFT_STATE_ACTIVE)}
    # Anyone may read it: operators and services too.
    for caller in (OPERATOR, service("edge")):
        assert suite.clients.call("ListGifts", gifting_pb2.ListGiftsRequest(), caller).gifts == gifts


def test_a_new_price_is_a_new_version_and_a_sent_gift_keeps_the_price_it_was_sent_at(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    before = c.send("vince", gift_id="doughnut", quantity=2, recipient_id="carol")
    repriced = c.upsert("doughnut", "Doughnut", 40)
    assert (repriced.version, repriced.coin_price, repriced.diamonds) == (2, 40, 20)
    after = c.send("vince", gift_id="doughnut", quantity=2, recipient_id="carol")
    assert (before.gift_version, before.unit_coin_price, before.total_coins) == (1, 30, 60)
    assert (after.gift_version, after.unit_coin_price, after.total_coins) == (2, 40, 80)
    assert c.transfer("vince", before.transfer_id) == before  # unchanged by the new price
    assert c.balance("vince").total == 700 - 60 - 80 and c.diamonds("carol") == 30 + 40
    # Renaming alone is not a new version; the same price again neither.
    renamed = c.upsert("doughnut", "Glazed Doughnut", 40)
    assert (renamed.version, renamed.name) == (2, "Glazed Doughnut")
    assert c.send("vince", gift_id="doughnut", recipient_id="carol").gift_name == "Glazed Doughnut"
    assert c.transfer("vince", before.transfer_id).gift_name == "Doughnut"


def test_a_new_gift_with_its_own_diamonds_pays_them_per_gift(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    star = c.upsert("star", "Star", 10, diamonds=7)
    assert (star.version, star.diamonds, star.state) == (1, 7, gifting_pb2.GIFT_STATE_ACTIVE)
    assert star.diamond_share_bps == 0  # explicit diamonds: a send pays quantity * diamonds
    assert [g.gift_id for g in catalogue(suite)][:4] == ["rose", "finger_heart", "star", "doughnut"]
    sent = c.send("vince", gift_id="star", quantity=3, recipient_id="carol")
    assert (sent.total_coins, sent.total_diamonds) == (30, 21)
    assert c.upsert("star", "Star", 10).version == 2  # back to the default share: a change of diamonds


def test_a_send_earns_the_share_of_its_whole_price_as_the_catalogue_says(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    rose = next(g for g in catalogue(suite) if g.gift_id == "rose")
    assert (rose.coin_price, rose.diamonds, rose.diamond_share_bps) == (1, 0, 5000)
    sent = c.send("vince", gift_id="rose", quantity=10, recipient_id="carol")
    assert sent.total_diamonds == 10 * rose.coin_price * rose.diamond_share_bps // 10_000 == 5


def test_a_retired_gift_leaves_the_catalogue_and_cannot_be_sent_until_upserted_again(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    retired = c.retire("galaxy")
    assert retired.state == gifting_pb2.GIFT_STATE_RETIRED
    assert "galaxy" not in [g.gift_id for g in catalogue(suite)]
    assert c.retire("galaxy") == retired  # retiring again changes nothing
    error = refused(lambda: c.send("vince", gift_id="galaxy", recipient_id="carol"))
    assert (error.code, error.reason, error.metadata["gift_id"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "GIFT_RETIRED",
        "galaxy",
    )
    back = c.upsert("galaxy", "Galaxy", 1000)
    assert (back.state, back.version) == (gifting_pb2.GIFT_STATE_ACTIVE, 1)
    unknown = refused(lambda: c.retire("dragon"))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "GIFT_NOT_FOUND")


def test_catalogue_changes_replay_under_their_request_id(suite: Suite) -> None:
    c = suite.clients
    request = gifting_pb2.UpsertGiftRequest(request_id=new_id(), gift_id="kiss", name="Kiss", coin_price=3)
    first = c.call("UpsertGift", request, OPERATOR)
    c.upsert("kiss", "Kiss", 4)
    assert c.call("UpsertGift", request, OPERATOR) == first  # the first answer, not a third version
    other = gifting_pb2.UpsertGiftRequest(request_id=request.request_id, gift_id="kiss", name="Kiss", coin_price=5)
    assert refused(lambda: c.call("UpsertGift", other, OPERATOR)).reason == "REQUEST_ID_REUSED"


def test_bad_catalogue_changes_name_their_fields(suite: Suite) -> None:
    c = suite.clients
    bad = gifting_pb2.UpsertGiftRequest(request_id="x", gift_id="no spaces", name=" ", coin_price=0, diamonds=-1)
    error = refused(lambda: c.call("UpsertGift", bad, OPERATOR))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in error.violations} == {"request_id", "gift_id", "name", "coin_price", "diamonds"}
    generous = gifting_pb2.UpsertGiftRequest(request_id=new_id(), gift_id="kiss", name="Kiss", coin_price=3, diamonds=4)
    assert [v.field for v in refused(lambda: c.call("UpsertGift", generous, OPERATOR)).violations] == ["diamonds"]
    retire = gifting_pb2.RetireGiftRequest(request_id=new_id(), gift_id="")
    assert [v.field for v in refused(lambda: c.call("RetireGift", retire, OPERATOR)).violations] == ["gift_id"]
    as_user = refused(
        lambda: c.gifting.UpsertGift(gifting_pb2.UpsertGiftRequest(), metadata=as_caller(user("vince")), timeout=5)
    )
    assert as_user.code == grpc.StatusCode.PERMISSION_DENIED
