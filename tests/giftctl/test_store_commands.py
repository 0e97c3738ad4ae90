"""giftctl and the real stores: a user's account token, an App Store receipt from a file, and a store
notification file replayed at the wallet's notifications endpoint (a real wallet, SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from services.giftctl.suite import free_port
from services.runtime.clock import FakeClock
from services.wallet.model import account_token
from tests.giftctl.test_rpc_commands import Giftctl
from tests.support.app_store import AppleChain, Transaction, app_store_env, notification
from tests.wallet.conftest import running_wallet


def test_a_receipt_file_buys_and_a_notification_file_refunds_once(
    make_database: Callable[[str], str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    clock = FakeClock()
    chain = AppleChain.make(clock.now())
    port = free_port()
    env = {
        **app_store_env(chain.write_root(tmp_path / "root.pem")),
        "GIFTCOIN_WALLET_STORE_NOTIFICATIONS_PORT": str(port),
    }
    with running_wallet(make_database("wallet"), clock, **env) as wallet:
        giftctl = Giftctl(capsys, wallet=f"127.0.0.1:{wallet.running.port}")
        status, out, _ = giftctl("--as", "user:ana", "wallet", "account-token")
        assert (status, out.strip()) == (0, account_token("ana"))
        giftctl.json("--as", "user:ana", "wallet", "open", "--birth-date", "1994-05-17", "--country", "US")

        bought = Transaction(clock.now(), account_token("ana"))
        receipt = tmp_path / "transaction.jws"
        receipt.write_text(chain.sign(bought.payload()) + "\n")
        buy = ("--as", "user:ana", "wallet", "buy", "--package", "coins_700", "--store", "app_store")
        purchase = giftctl.json(*buy, "--receipt-file", str(receipt))
        assert (purchase["purchase"]["store_transaction_id"], purchase["wallet"]["balance"]["total"]) == (
            bought.transaction_id,
            700,
        )

        refund = tmp_path / "refund.json"
        revoked = replace(bought, revoked_at=clock.now())
        refund.write_bytes(notification(chain, "REFUND", revoked, clock.now() + timedelta(hours=1)))
        notify = ("wallet", "notify", str(refund), "--store", "app_store", "--url", f"http://127.0.0.1:{port}")
        status, out, err = giftctl(*notify)
        assert (status, json.loads(out)["outcome"], err) == (0, "applied", "")
        status, out, _ = giftctl(*notify)
        assert (status, json.loads(out)["outcome"]) == (0, "duplicate")
        assert giftctl.json("--as", "user:ana", "wallet", "get")["wallet"]["balance"]["total"] == 0

        forged = tmp_path / "forged.json"
        forged.write_bytes(notification(AppleChain.make(clock.now()), "REFUND", revoked, clock.now()))
        status, out, err = giftctl(
            "wallet", "notify", str(forged), "--store", "app_store", "--url", f"http://127.0.0.1:{port}"
        )
        assert (status, out) == (1, "")
        assert (
            err.startswith("giftctl: the wallet refused the notification: HTTP 400 ")
            and "STORE_CERTIFICATE_INVALID" in err
        )
        assert len(err.splitlines()) == 1
