"""Error mapping (AIP-193), access policies, request validation (tokens: test_tokens.py)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from services.runtime import auth
from services.runtime.config import ConfigError, Env, load_service_settings
from services.runtime.errors import DomainError, failed_precondition, to_rpc_status
from services.runtime.validation import Validator, age_on


def test_status_carries_error_info_with_domain_and_metadata() -> None:
    error = failed_precondition("INSUFFICIENT_FUNDS", "needs 30 coins, has 4", needed=30, available=4)
    status = to_rpc_status(error, "wallet.giftcoin")
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INSUFFICIENT_FUNDS",
        "wallet.giftcoin",
        {"needed": "30", "available": "4"},
    )


def test_unknown_reasons_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown error reason"):
        failed_precondition("NOT_A_REASON", "x")


def test_validator_reports_every_bad_field_as_bad_request() -> None:
    v = Validator()
    v.request_id("not-a-uuid")
    v.positive(0, "amount")
    v.identifier("x" * 200, "gift_id")
    v.country("usa")
    with pytest.raises(DomainError) as bad:
        v.check()
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [x.field for x in bad.value.violations] == ["request_id", "amount", "gift_id", "country_code"]
    status = to_rpc_status(bad.value, "wallet.giftcoin")
    request = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(request)
    assert [f.field for f in request.field_violations] == ["request_id", "amount", "gift_id", "country_code"]


def test_age_counts_whole_years() -> None:
    from datetime import date

    assert age_on(date(2008, 6, 15), date(2026, 6, 14)) == 17
    assert age_on(date(2008, 6, 15), date(2026, 6, 15)) == 18


def test_internal_access_admits_only_the_named_service() -> None:
    policy = auth.internal("gifting")
    policy.check(auth.service("gifting"))
    for outsider in (auth.service("payout"), auth.user("gifting"), auth.operator("root")):
        with pytest.raises(DomainError) as denied:
            policy.check(outsider)
        assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_production_settings_need_a_key_and_mtls() -> None:
    with pytest.raises(ConfigError, match="GIFTCOIN_JWT_KEYS"):
        load_service_settings("wallet", Env({}))
    with pytest.raises(ConfigError, match="mTLS"):
        load_service_settings("wallet", Env({"GIFTCOIN_JWT_KEYS": "/etc/giftcoin/jwks"}))
    env = Env({"GIFTCOIN_DEV_MODE": "true", "GIFTCOIN_WALLET_PORT": "6000"})
    settings = load_service_settings("wallet", env)
    assert (settings.port, settings.identity.keys_path, settings.host) == (6000, "", "127.0.0.1")
    assert "GIFTCOIN_WALLET_DATABASE_URL" in env.names
    with pytest.raises(ConfigError, match="integer"):
        load_service_settings("wallet", Env({"GIFTCOIN_DEV_MODE": "1", "GIFTCOIN_WALLET_PORT": "x"}))
