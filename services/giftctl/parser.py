"""giftctl's command tree: global options, the subcommands and their arguments.

The local commands (up, watch, trace, reconcile, demo) are named here, not run: `cli.main` runs each by
its name (`args.local_command`), so that this module needs none of their modules and the demo, which
parses the RPC command lines it shows, can use the same parser without importing the command line.
"""

from __future__ import annotations

import argparse
import os
from typing import NoReturn

from services.giftctl import arguments, gifting_cli, payout_cli, wallet_cli
from services.giftctl.session import SERVICES, CliError, default_target, target_env_name
from services.reconciler.reconcile import DEFAULT_IN_FLIGHT

IDENTITY_ENV = "GIFTCTL_AS"
DISCREPANCIES_EXIT = 3  # `reconcile` found the books disagreeing
DATA_DIR_ENV = "GIFTCTL_DATA_DIR"

DESCRIPTION = """\
The command-line client of giftcoin: call every user-facing and operator RPC of the wallet,
gifting and payout services, run the suite locally (up), follow a live gift feed (watch), show a
gift's trace across the services (trace), prove the three services' books agree (reconcile), and
walk the whole story (demo)."""

EPILOG = f"""\
identity: --as user:<id> or --as operator:<id> (default ${IDENTITY_ENV}); giftctl signs a short-lived
token with the private JWK in $GIFTCOIN_JWT_SIGNING_KEY_FILE, or the services' dev-mode key when unset.
targets: --wallet/--gifting/--payout HOST:PORT (default ${target_env_name("wallet")} etc., else
127.0.0.1:50051/50052/50053). Mutating calls get a fresh UUID4 request id unless --request-id
is given (the same id and request replays the first answer).

examples:
  giftctl up
  giftctl --as user:ana wallet open --birth-date 1990-04-01 --country US
  giftctl --as user:ana wallet buy --package coins_700
  giftctl --as user:ana gifting send rose --quantity 10 --to cara --stream live-1
  giftctl watch live-1
  giftctl trace <gift-id>
  giftctl reconcile --since 2h
  giftctl demo"""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, `<command>: error: <what>` (the usage block is for --help)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(message, exit_status=2, line=f"{self.prog}: error: {message}")


def _global_options(top_level: bool) -> _Parser:
    """The options every command takes, before or after its name. Leaf parsers use SUPPRESS defaults
    so that an option given before the subcommand is not reset by the leaf's default."""
    parser = _Parser(add_help=False)

    def default(value: object) -> object:
        return value if top_level else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--as",
        dest="identity",
        type=arguments.identity,
        default=default(os.environ.get(IDENTITY_ENV) or None),
        metavar="user:ID|operator:ID",
        help=f"who to act as (default ${IDENTITY_ENV})",
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON for machines")
    group.add_argument(
        "--request-id",
        type=arguments.request_id,
        default=default(None),
        metavar="UUID",
        help="the request id of a mutating call (default: a fresh UUID4)",
    )
    for service in SERVICES:
        group.add_argument(
            f"--{service}",
            dest=f"{service}_target",
            type=arguments.target,
            default=default(default_target(service)),
            metavar="HOST:PORT",
            help=f"the {service} service (default ${target_env_name(service)} or {default_target(service)})",
        )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="giftctl",
        description=DESCRIPTION,
        epilog=EPILOG,
        parents=[_global_options(top_level=True)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    leaf_options = [_global_options(top_level=False)]
    commands = parser.add_subparsers(metavar="COMMAND", required=True)

    for name, module, summary in (
        ("wallet", wallet_cli, "coins: wallets, packages, purchases, promotions, history"),
        ("gifting", gifting_cli, "gifts: catalogue, send, history, leaderboards"),
        ("payout", payout_cli, "diamonds: creators, earnings, quotes, payouts"),
    ):
        group = commands.add_parser(name, help=summary, description=summary)
        module.register(group.add_subparsers(metavar="COMMAND", required=True), leaf_options)

    p = commands.add_parser(
        "up",
        parents=leaf_options,
        help="run wallet, payout and gifting locally until Ctrl-C",
        description="Run the three services as local processes (dev mode, SQLite, span files) on the "
        "--wallet/--gifting/--payout addresses until Ctrl-C or SIGTERM, then stop them cleanly.",
    )
    p.add_argument("--data-dir", default=default_data_dir(), help="databases, logs, span files (default .data)")
    p.set_defaults(local_command="up")

    p = commands.add_parser(
        "watch",
        parents=leaf_options,
        help="follow a live stream's (or video's) gift feed",
        description="Follow the completed gifts of a live stream (or --video) as they happen; on a dropped "
        "connection, resume after the last gift shown. Ctrl-C stops.",
    )
    p.add_argument("target_id", metavar="STREAM_ID", help="the live stream (or video, with --video)")
    p.add_argument("--video", action="store_true", help="STREAM_ID is a video id")
    p.add_argument("--after", type=arguments.integer(0), default=0, help="resume after this sequence (default: now)")
    p.add_argument("--count", type=arguments.integer(0), default=0, help="stop after this many gifts (default: never)")
    p.set_defaults(local_command="watch")

    p = commands.add_parser(
        "trace",
        parents=leaf_options,
        help="show a gift's trace across the services",
        description="Read the span files (<data-dir>/traces-*.jsonl, written by `giftctl up`) and print "
        "the trace of a gift as a tree: service, span, duration, status.",
    )
    p.add_argument("gift_id", metavar="GIFT_ID", help="the id `gifting send` printed")
    p.add_argument("--data-dir", default=default_data_dir(), help="where the span files are (default .data)")
    p.add_argument("--brief", action="store_true", help="fold database spans into a count")
    p.set_defaults(local_command="trace")

    p = commands.add_parser(
        "reconcile",
        parents=leaf_options,
        help="prove that wallet, gifting and payout agree over a window, and sum up its money",
        description="Read the three services' books through their RPCs (as service:reconciler, or --as "
        "operator:<id>) and check every gift of the window against its hold and its credit; print each "
        "discrepancy with its ids and what to do, and the window's money. Exits 0 when the books agree, "
        f"{DISCREPANCIES_EXIT} when they do not, 1 when a service cannot be read.",
    )
    p.add_argument("--since", type=arguments.moment, metavar="TIME", help="ISO 8601, or a duration (default 24h)")
    p.add_argument("--until", type=arguments.moment, metavar="TIME", help="default: now")
    p.add_argument(
        "--in-flight",
        type=arguments.integer(1),
        default=int(DEFAULT_IN_FLIGHT.total_seconds()),
        metavar="SECONDS",
        help="a pending gift younger than this is in flight, older is stuck (default %(default)s)",
    )
    p.set_defaults(local_command="reconcile")

    p = commands.add_parser(
        "demo",
        parents=leaf_options,
        help="start the suite and walk the whole story",
        description="Start the suite in a temporary directory on free ports and walk the story through the "
        "public RPCs: wallets, purchases, a promotion, a creator, a live feed, gifts, a leaderboard, "
        "earnings, quotes, a payout, a refused gift, and one gift's trace. Stops everything; exits 0.",
    )
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    p.set_defaults(local_command="demo")
    return parser


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV, ".data")


def targets(args: argparse.Namespace) -> dict[str, str]:
    return {service: getattr(args, f"{service}_target") for service in SERVICES}
