"""SendGift over gRPC with the real wallet and payout: what moves, what is refused and why, and replays.

Every test ends with value conserved across the three services (the `suite` fixture checks).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

import grpc
import pytest
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.wallet.v1 import wallet_pb2

from tests.gifting.harness import MINOR, OPERATOR, STREAM, Suite, new_id, refused, start_suite
from tests.support.identity import as_caller, service, user

COMPLETED = gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED
FAILED = gifting_pb2.GIFT_TRANSFER_STATE_FAILED
VIDEO = gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_VIDEO, id="video-9")


def test_a_combo_spends_its_coins_and_credits_the_floored_share(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    transfer = c.send("vince", gift_id="rose", quantity=10, recipient_id="carol")

    assert transfer.state == COMPLETED
    assert (transfer.sender_id, transfer.recipient_id, transfer.gift_id, transfer.gift_name) == (
        "vince",
        "carol",
        "rose",
        "Rose",
    )
    assert (transfer.quantity, transfer.unit_coin_price, transfer.total_coins) == (10, 1, 10)
    assert transfer.total_diamonds == 5  # floor(10 * 5000 / 10000), the rest is the platform's
    assert transfer.gift_version == 1 and transfer.failure_reason == ""
    assert transfer.target == STREAM
    assert transfer.complete_time.seconds >= transfer.create_time.seconds > 0
    assert c.balance("vince").total == 690 and c.balance("vince").held == 0
    assert c.diamonds("carol") == 5
    # Both parties see it; it is the same record.
    assert c.transfer("vince", transfer.transfer_id) == transfer
    assert c.transfer("carol", transfer.transfer_id) == transfer


def test_an_odd_price_floors_in_the_platforms_favour_and_one_rose_credits_nothing(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince", "coins_350")
    c.creator("carol")
    lion_cub = c.upsert("lion_cub", "Lion Cub", 33)
    assert lion_cub.diamonds == 16  # floor(33 / 2): one gift alone
    assert c.send("vince", gift_id="lion_cub", quantity=3, recipient_id="carol").total_diamonds == 49  # floor(99 / 2)
    one_rose = c.send("vince", gift_id="rose", quantity=1, recipient_id="carol")
    assert (one_rose.state, one_rose.total_coins, one_rose.total_diamonds) == (COMPLETED, 1, 0)
    assert c.balance("vince").total == 350 - 99 - 1
    assert c.diamonds("carol") == 49


def test_gifts_to_a_video_and_a_stream_are_both_sends(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    on_video = c.send("vince", gift_id="doughnut", quantity=2, recipient_id="carol", target=VIDEO)
    assert on_video.state == COMPLETED and on_video.target == VIDEO
    assert c.diamonds("carol") == 30


def test_the_same_request_replays_its_transfer_and_another_request_under_its_id_is_refused(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    request = c.send_request(gift_id="finger_heart", quantity=4, recipient_id="carol")
    first = c.send("vince", request)
    for _ in range(3):
        assert c.send("vince", request) == first
    assert c.balance("vince").total == 680 and c.diamonds("carol") == 10

    other = c.send_request(gift_id="rose", quantity=4, recipient_id="carol", request_id=request.request_id)
    error = refused(lambda: c.send("vince", other))
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    # Request ids are the caller's: another viewer may use the same one for their own gift.
    c.viewer("wendy")
    assert c.send("wendy", c.send_request(recipient_id="carol", request_id=request.request_id)).state == COMPLETED
    assert c.balance("vince").total == 680


def test_concurrent_duplicates_of_one_send_move_value_once(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    request = c.send_request(gift_id="confetti", quantity=2, recipient_id="carol")
    answers: list[gifting_pb2.GiftTransfer] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            answers.append(c.send_until_answered("vince", request))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({a.transfer_id for a in answers}) == 1 and {a.state for a in answers} == {COMPLETED}
    assert c.balance("vince").total == 500 and c.diamonds("carol") == 100
    sent = c.call("ListSentGifts", gifting_pb2.ListSentGiftsRequest(), user("vince")).transfers
    assert len(sent) == 1


def test_a_refused_send_fails_with_the_wallets_reason_costs_nothing_and_replays_the_same_error(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince", "coins_70")
    c.creator("carol")
    request = c.send_request(gift_id="confetti", quantity=1, recipient_id="carol")
    error = refused(lambda: c.send("vince", request))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    assert error.metadata["available"] == "70" and error.metadata["amount"] == "100"
    transfer_id = error.metadata["transfer_id"]
    failed = c.transfer("vince", transfer_id)
    assert (failed.state, failed.failure_reason, failed.total_coins) == (FAILED, "INSUFFICIENT_FUNDS", 100)
    assert not failed.HasField("complete_time")
    assert c.balance("vince").total == 70 and c.diamonds("carol") == 0
    # A failed send keeps failing under its id, even once the viewer could afford it (TigerBeetle's
    # id_already_failed); a new request id is a new send.
    c.buy("vince", "coins_70")
    assert refused(lambda: c.send("vince", request)) == error
    retry = c.send("vince", c.send_request(gift_id="confetti", quantity=1, recipient_id="carol"))
    assert retry.state == COMPLETED and retry.transfer_id != transfer_id
    assert c.balance("vince").total == 40 and c.diamonds("carol") == 50


def test_every_refusal_has_its_code_and_reason(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.viewer("young", born=MINOR, package_id="")  # minors buy no coins
    c.creator("carol")
    c.creator("kid", born=MINOR)
    c.viewer("nobody_creator")
    cases = {
        "SELF_GIFT": (grpc.StatusCode.INVALID_ARGUMENT, "vince", c.send_request(recipient_id="vince")),
        "GIFT_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, "vince", c.send_request(gift_id="unicorn")),
        "SENDER_UNDERAGE": (grpc.StatusCode.FAILED_PRECONDITION, "young", c.send_request()),
        "WALLET_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, "stranger", c.send_request()),
        "INSUFFICIENT_FUNDS": (grpc.StatusCode.FAILED_PRECONDITION, "vince", c.send_request(gift_id="lion")),
        "RECIPIENT_CANNOT_RECEIVE": (
            grpc.StatusCode.FAILED_PRECONDITION,
            "vince",
            c.send_request(gift_id="finger_heart", recipient_id="kid"),
        ),
    }
    for reason, (code, sender, request) in cases.items():
        error = refused(partial(c.send, sender, request))
        assert (error.code, error.reason) == (code, reason), reason
    not_a_creator = refused(lambda: c.send("vince", gift_id="finger_heart", recipient_id="nobody_creator"))
    assert not_a_creator.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not_a_creator.reason == "RECIPIENT_CANNOT_RECEIVE"
    # In the sender's terms: the transfer under transfer_id (not payout's gift_id), the recipient's id.
    assert set(not_a_creator.metadata) == {"recipient_id", "transfer_id"}
    assert not_a_creator.metadata["recipient_id"] == "nobody_creator"
    # One Rose earns no diamonds (floor(1 / 2)), yet its recipient is checked all the same.
    for recipient in ("kid", "nobody_creator"):
        one_rose = refused(partial(c.send, "vince", gift_id="rose", recipient_id=recipient))
        assert (one_rose.code, one_rose.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RECIPIENT_CANNOT_RECEIVE")
    self_gift = refused(lambda: c.send("vince", recipient_id="vince"))
    assert [v.field for v in self_gift.violations] == ["recipient_id"]
    c.retire("doughnut")
    retired = refused(lambda: c.send("vince", gift_id="doughnut"))
    assert (retired.code, retired.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "GIFT_RETIRED")
    # Nothing of any refusal cost anything: the recipient refusals released their holds.
    assert c.balance("vince").total == 700 and c.balance("vince").held == 0
    assert c.diamonds("carol") == c.diamonds("kid") == 0


def test_a_frozen_wallet_cannot_send(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince", "coins_70", store_transaction_id="txn-frozen")
    c.creator("carol")
    c.send("vince", gift_id="doughnut", quantity=2, recipient_id="carol")  # 60 of the 70 coins
    refund = wallet_pb2.RefundPurchaseRequest(
        request_id=new_id(), store="sandbox", store_transaction_id="txn-frozen", kind=wallet_pb2.REFUND_KIND_REFUND
    )
    c.wallet.RefundPurchase(refund, metadata=as_caller(OPERATOR), timeout=10)  # 10 taken back, 60 owed
    error = refused(lambda: c.send("vince", gift_id="rose", recipient_id="carol"))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WALLET_FROZEN")


def test_the_daily_limit_is_per_sender_per_utc_day_and_failed_gifts_give_it_back(
    make_database: Callable[[str], str],
) -> None:
    suite = start_suite(make_database, GIFTCOIN_GIFTING_DAILY_SPEND_LIMIT_COINS="150")
    try:
        c = suite.clients
        c.viewer("vince")
        c.creator("carol")
        assert c.send("vince", gift_id="confetti", recipient_id="carol").state == COMPLETED  # 100 of 150
        error = refused(lambda: c.send("vince", gift_id="doughnut", quantity=2, recipient_id="carol"))
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "DAILY_SPENDING_LIMIT_EXCEEDED")
        assert error.metadata["limit"] == "150" and error.metadata["spent"] == "100"
        # A gift that fails after being counted gives its coins back to the day's limit.
        assert refused(lambda: c.send("vince", gift_id="doughnut", recipient_id="nobody")).reason == (
            "RECIPIENT_CANNOT_RECEIVE"
        )
        assert c.send("vince", gift_id="finger_heart", quantity=10, recipient_id="carol").state == COMPLETED  # 150
        suite.clock.advance(days=1)
        assert c.send("vince", gift_id="confetti", recipient_id="carol").state == COMPLETED
        assert c.balance("vince").total == 700 - 100 - 50 - 100
        assert suite.problems() == []
    finally:
        suite.close()


def test_bad_input_is_invalid_argument_naming_each_field(suite: Suite) -> None:
    c = suite.clients
    bad = gifting_pb2.SendGiftRequest(
        request_id="not-a-uuid",
        gift_id="",
        quantity=10_000,
        recipient_id="bad id",
        target=gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_UNSPECIFIED, id=""),
    )
    error = refused(lambda: c.send("vince", bad))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.reason == "INVALID_ARGUMENT"
    assert {v.field for v in error.violations} == {
        "request_id",
        "gift_id",
        "quantity",
        "recipient_id",
        "target.kind",
        "target.id",
    }
    no_target = gifting_pb2.SendGiftRequest(request_id=new_id(), gift_id="rose", quantity=0, recipient_id="carol")
    assert {v.field for v in refused(lambda: c.send("vince", no_target)).violations} == {"quantity", "target"}


@pytest.mark.parametrize(
    ("method", "request_message", "caller"),
    [
        ("SendGift", gifting_pb2.SendGiftRequest(), OPERATOR),
        ("SendGift", gifting_pb2.SendGiftRequest(), service("gifting")),
        ("UpsertGift", gifting_pb2.UpsertGiftRequest(), user("vince")),
        ("RetireGift", gifting_pb2.RetireGiftRequest(), user("vince")),
        ("ListSentGifts", gifting_pb2.ListSentGiftsRequest(), OPERATOR),
        ("GetGiftTransfer", gifting_pb2.GetGiftTransferRequest(transfer_id="x"), OPERATOR),
    ],
)
def test_who_may_call_what(suite: Suite, method: str, request_message: object, caller: object) -> None:
    error = refused(lambda: suite.clients.call(method, request_message, caller))  # type: ignore[arg-type]
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


def test_a_transfer_is_visible_only_to_its_sender_and_recipient(suite: Suite) -> None:
    c = suite.clients
    c.viewer("vince")
    c.creator("carol")
    transfer = c.send("vince", recipient_id="carol")
    someone_elses = refused(lambda: c.transfer("mallory", transfer.transfer_id))
    assert (someone_elses.code, someone_elses.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    # Checked before NOT_FOUND: an unknown id tells a stranger nothing more than someone else's does.
    unknown = refused(lambda: c.transfer("mallory", new_id()))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert refused(lambda: c.transfer("vince", "")).violations[0].field == "transfer_id"
    no_token = refused(lambda: c.gifting.ListGifts(gifting_pb2.ListGiftsRequest(), timeout=5))
    assert no_token.code == grpc.StatusCode.UNAUTHENTICATED
