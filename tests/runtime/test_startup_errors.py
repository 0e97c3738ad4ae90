"""A service that cannot start says why in one line naming the variable to fix, exit status 2, and
no traceback: `python -m services.wallet` as an operator runs it, misconfigured each way."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.giftctl.suite import free_port
from services.runtime.auth import keygen
from tests.support.processes import ROOT

NOT_STARTED = 2


def start_wallet(env: dict[str, str], *command: str) -> tuple[int, list[str]]:
    """Run the wallet until it exits (it must: it cannot start); its status and stderr's lines,
    less the JSON log lines that start-up wrote before failing."""
    environment = {
        **os.environ,
        "GIFTCOIN_DEV_MODE": "true",
        "GIFTCOIN_WALLET_PORT": str(free_port()),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.wallet", *command],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, [line for line in done.stderr.splitlines() if not line.startswith('{"time"')]


def one_line(env: dict[str, str], *command: str) -> str:
    status, lines = start_wallet(env, *command)
    assert status == NOT_STARTED and len(lines) == 1, lines
    assert lines[0].startswith("wallet: cannot start: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("migrate_on_start", ["true", "false"])
def test_an_unreachable_database_names_the_url_variable_without_its_password(migrate_on_start: str) -> None:
    url = f"postgresql://giftcoin:s3cret@127.0.0.1:{free_port()}/wallet"
    line = one_line({"GIFTCOIN_WALLET_DATABASE_URL": url, "GIFTCOIN_MIGRATE_ON_START": migrate_on_start})
    assert "GIFTCOIN_WALLET_DATABASE_URL" in line and "Connection refused" in line
    assert "s3cret" not in line and "postgresql://giftcoin:***@127.0.0.1" in line


def test_a_migrate_command_says_the_same() -> None:
    url = f"postgresql://giftcoin@127.0.0.1:{free_port()}/wallet"
    assert "GIFTCOIN_WALLET_DATABASE_URL" in one_line({"GIFTCOIN_WALLET_DATABASE_URL": url}, "migrate")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("cockroachdb://db/wallet", "unknown database scheme 'cockroachdb'"),
        ("mysql://giftcoin@db/wallet", "the driver for 'mysql' is not installed (MySQLdb)"),
        ("wallet.db", "not a database URL"),
    ],
)
def test_a_url_the_service_cannot_use_names_the_variable(url: str, says: str) -> None:
    line = one_line({"GIFTCOIN_WALLET_DATABASE_URL": url})
    assert line.startswith("wallet: cannot start: GIFTCOIN_WALLET_DATABASE_URL: ") and says in line


def test_a_database_never_migrated_says_to_migrate_it(tmp_path: Path) -> None:
    line = one_line(
        {"GIFTCOIN_WALLET_DATABASE_URL": f"sqlite:///{tmp_path}/empty.db", "GIFTCOIN_MIGRATE_ON_START": "false"}
    )
    assert "has no giftcoin tables" in line and "python -m services.wallet migrate" in line


def _tls(tmp_path: Path, **files: str) -> dict[str, str]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [keygen("issuer/1", str(tmp_path / "issuer.private.json"))]}))
    env = {"GIFTCOIN_DEV_MODE": "false", "GIFTCOIN_JWT_KEYS": str(jwks), "GIFTCOIN_WALLET_HOST": "127.0.0.1"}
    env["GIFTCOIN_WALLET_DATABASE_URL"] = f"sqlite:///{tmp_path}/wallet.db"
    for name, content in files.items():
        path = tmp_path / f"{name}.pem"
        if content:
            path.write_text(content)
        env[f"GIFTCOIN_TLS_{name.upper()}_FILE"] = str(path)
    return env


def test_a_key_set_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    env = {**_tls(tmp_path), "GIFTCOIN_DEV_MODE": "true", "GIFTCOIN_JWT_KEYS": str(tmp_path / "missing.json")}
    assert "GIFTCOIN_JWT_KEYS: cannot read " in one_line(env)


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    line = one_line(_tls(tmp_path, cert="", key="", ca=""))
    assert "GIFTCOIN_TLS_CERT_FILE: no file " in line


def test_a_tls_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    assert "GIFTCOIN_TLS_CA_FILE: " in one_line(_tls(tmp_path, cert="x", key="y", ca="not a certificate"))


def test_two_tls_files_of_three_say_which_is_missing(tmp_path: Path) -> None:
    env = _tls(tmp_path, cert="x", key="y")
    env["GIFTCOIN_DEV_MODE"] = "true"  # dev mode would otherwise quietly serve plaintext
    line = one_line(env)
    assert "GIFTCOIN_TLS_CA_FILE not" in line


def test_a_port_in_use_names_the_port_variables(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(
            {"GIFTCOIN_WALLET_DATABASE_URL": f"sqlite:///{tmp_path}/wallet.db", "GIFTCOIN_WALLET_PORT": str(port)}
        )
    assert line.startswith(f"wallet: cannot start: GIFTCOIN_WALLET_PORT: cannot listen on 127.0.0.1:{port} ")


def test_a_bad_setting_is_a_configuration_error() -> None:
    status, lines = start_wallet({"GIFTCOIN_TRACE_EXPORTER": "jaeger"})
    assert status == NOT_STARTED
    assert lines == [
        "wallet: configuration error: GIFTCOIN_TRACE_EXPORTER must be one of none, console, file, otlp, memory, "
        "got 'jaeger'"
    ]
