"""Creators: registration, eligibility, KYC, destinations; who may do what; bad input."""

from __future__ import annotations

from datetime import date

import grpc
import pytest
from giftcoin.common.v1 import common_pb2
from giftcoin.payout.v1 import payout_pb2

from services.runtime.errors import DomainError
from tests.payout.conftest import PayoutHarness, rid
from tests.support.identity import operator, service, user


def register_request(
    born: date | None = date(1990, 5, 17), country: str = "US", request_id: str = ""
) -> payout_pb2.RegisterCreatorRequest:
    request = payout_pb2.RegisterCreatorRequest(request_id=request_id or rid(), country_code=country)
    if born is not None:
        request.date_of_birth.CopyFrom(common_pb2.Date(year=born.year, month=born.month, day=born.day))
    return request


def violations(error: DomainError) -> set[str]:
    return {v.field for v in error.violations}


def test_register_creator(payout: PayoutHarness) -> None:
    creator = payout.call("RegisterCreator", register_request(), user("alice")).creator
    assert creator.creator_id == "alice"
    assert creator.eligible and creator.gifting_enabled
    assert creator.kyc_status == payout_pb2.KYC_STATUS_UNVERIFIED
    assert not creator.HasField("destination")
    assert (creator.date_of_birth.year, creator.country_code) == (1990, "US")


def test_registering_twice_is_refused_and_a_replay_is_identical(payout: PayoutHarness) -> None:
    request = register_request()
    first = payout.call("RegisterCreator", request, user("alice"))
    assert payout.call("RegisterCreator", request, user("alice")) == first
    error = payout.refused("RegisterCreator", register_request(), user("alice"))
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "CREATOR_ALREADY_EXISTS")
    assert error.metadata["creator_id"] == "alice"


@pytest.mark.parametrize(("born", "eligible"), [(date(2008, 1, 1), True), (date(2008, 1, 2), False)])
def test_eligible_from_the_18th_birthday(payout: PayoutHarness, born: date, eligible: bool) -> None:
    # The test clock says 2026-01-01.
    creator = payout.call("RegisterCreator", register_request(born), user("teen")).creator
    assert creator.eligible is eligible


def test_a_minor_becomes_eligible_on_their_birthday(payout: PayoutHarness) -> None:
    payout.call("RegisterCreator", register_request(date(2008, 1, 2)), user("teen"))
    verify = payout_pb2.VerifyCreatorRequest(
        request_id=rid(), creator_id="teen", kyc_status=payout_pb2.KYC_STATUS_VERIFIED
    )
    assert not payout.call("VerifyCreator", verify, operator("kyc")).creator.eligible
    payout.clock.advance(days=1)
    verify.request_id = rid()
    assert payout.call("VerifyCreator", verify, operator("kyc")).creator.eligible


def test_bad_registration_names_every_field(payout: PayoutHarness) -> None:
    error = payout.refused("RegisterCreator", register_request(None, "usa", "not-a-uuid"), user("alice"))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert violations(error) == {"request_id", "date_of_birth", "country_code"}
    future = payout.refused("RegisterCreator", register_request(date(2999, 1, 1)), user("alice"))
    assert violations(future) == {"date_of_birth"}


def test_only_users_register_and_set_destinations(payout: PayoutHarness) -> None:
    for caller in (operator("kyc"), service("gifting")):
        error = payout.refused("RegisterCreator", register_request(), caller)
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


def test_no_token_is_unauthenticated(payout: PayoutHarness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        payout.stub.GetEarnings(payout_pb2.GetEarningsRequest(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_kyc_is_the_operators(payout: PayoutHarness) -> None:
    payout.register("alice", verified=False)
    verify = payout_pb2.VerifyCreatorRequest(
        request_id=rid(), creator_id="alice", kyc_status=payout_pb2.KYC_STATUS_VERIFIED
    )
    for caller in (user("alice"), service("gifting")):
        error = payout.refused("VerifyCreator", verify, caller)
        assert error.code is grpc.StatusCode.PERMISSION_DENIED
    creator = payout.call("VerifyCreator", verify, operator("kyc")).creator
    assert creator.kyc_status == payout_pb2.KYC_STATUS_VERIFIED

    missing = payout_pb2.VerifyCreatorRequest(
        request_id=rid(), creator_id="nobody", kyc_status=payout_pb2.KYC_STATUS_VERIFIED
    )
    error = payout.refused("VerifyCreator", missing, operator("kyc"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "CREATOR_NOT_FOUND")
    unspecified = payout_pb2.VerifyCreatorRequest(request_id=rid(), creator_id="alice")
    assert violations(payout.refused("VerifyCreator", unspecified, operator("kyc"))) == {"kyc_status"}


def test_destinations(payout: PayoutHarness) -> None:
    payout.register("alice", destination=None)
    creator = payout.set_destination("alice", "delay:30")
    assert creator.destination.kind == payout_pb2.DESTINATION_KIND_SANDBOX
    assert creator.destination.account_reference == "delay:30"

    def set_to(kind: payout_pb2.DestinationKind.ValueType, reference: str, currency: str) -> DomainError:
        destination = payout_pb2.PayoutDestination(kind=kind, account_reference=reference, currency_code=currency)
        request = payout_pb2.SetPayoutDestinationRequest(request_id=rid(), destination=destination)
        return payout.refused("SetPayoutDestination", request, user("alice"))

    sandbox = payout_pb2.DESTINATION_KIND_SANDBOX
    assert violations(set_to(sandbox, "maybe", "USD")) == {"destination.account_reference"}
    assert violations(set_to(sandbox, "delay:99999999", "USD")) == {"destination.account_reference"}
    assert violations(set_to(payout_pb2.DESTINATION_KIND_UNSPECIFIED, "", "usd")) == {
        "destination.kind",
        "destination.account_reference",
        "destination.currency_code",
    }
    euros = set_to(payout_pb2.DESTINATION_KIND_BANK_ACCOUNT, "DE89370400440532013000", "EUR")
    assert (euros.code, euros.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CURRENCY_NOT_SUPPORTED")
    assert violations(euros) == {"destination.currency_code"}
    missing = payout.refused(
        "SetPayoutDestination", payout_pb2.SetPayoutDestinationRequest(request_id=rid()), user("alice")
    )
    assert violations(missing) == {"destination"}

    nobody = payout.refused(
        "SetPayoutDestination",
        payout_pb2.SetPayoutDestinationRequest(
            request_id=rid(),
            destination=payout_pb2.PayoutDestination(kind=sandbox, account_reference="succeed", currency_code="USD"),
        ),
        user("bob"),
    )
    assert (nobody.code, nobody.reason) == (grpc.StatusCode.NOT_FOUND, "CREATOR_NOT_FOUND")
