"""The giftctl command line: global options, the subcommand tree, and running one command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import grpc

from services.giftctl import arguments, gifting_cli, payout_cli, render, wallet_cli
from services.giftctl.command import RpcCommand, Who
from services.giftctl.session import (
    ANONYMOUS,
    SERVICES,
    CliError,
    Session,
    default_target,
    describe_rpc_error,
    target_env_name,
    token_source,
)
from services.reconciler.reconcile import DEFAULT_IN_FLIGHT, Report
from services.runtime.auth import CallerKind

IDENTITY_ENV = "GIFTCTL_AS"
DISCREPANCIES_EXIT = 3  # `reconcile` found the books disagreeing
DATA_DIR_ENV = "GIFTCTL_DATA_DIR"
DEBUG_ENV = "GIFTCTL_DEBUG"

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
    p.add_argument("--data-dir", default=_default_data_dir(), help="databases, logs, span files (default .data)")
    p.set_defaults(handler=_up)

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
    p.set_defaults(handler=_watch)

    p = commands.add_parser(
        "trace",
        parents=leaf_options,
        help="show a gift's trace across the services",
        description="Read the span files (<data-dir>/traces-*.jsonl, written by `giftctl up`) and print "
        "the trace of a gift as a tree: service, span, duration, status.",
    )
    p.add_argument("gift_id", metavar="GIFT_ID", help="the id `gifting send` printed")
    p.add_argument("--data-dir", default=_default_data_dir(), help="where the span files are (default .data)")
    p.add_argument("--brief", action="store_true", help="fold database spans into a count")
    p.set_defaults(handler=_trace)

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
    p.set_defaults(handler=_reconcile)

    p = commands.add_parser(
        "demo",
        parents=leaf_options,
        help="start the suite and walk the whole story",
        description="Start the suite in a temporary directory on free ports and walk the story through the "
        "public RPCs: wallets, purchases, a promotion, a creator, a live feed, gifts, a leaderboard, "
        "earnings, quotes, a payout, a refused gift, and one gift's trace. Stops everything; exits 0.",
    )
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    p.set_defaults(handler=_demo)
    return parser


def _default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV, ".data")


def _targets(args: argparse.Namespace) -> dict[str, str]:
    return {service: getattr(args, f"{service}_target") for service in SERVICES}


def _setup_tracing() -> None:
    """With GIFTCOIN_TRACE_EXPORTER set (file: GIFTCOIN_TRACE_FILE, default .data/traces-giftctl.jsonl),
    giftctl's own client spans are exported too, so a gift's trace starts at the call that sent it."""
    exporter = os.environ.get("GIFTCOIN_TRACE_EXPORTER", "none")
    if exporter in ("", "none"):
        return
    from services.runtime.telemetry import setup_tracing

    trace_file = os.environ.get("GIFTCOIN_TRACE_FILE") or str(Path(_default_data_dir()) / "traces-giftctl.jsonl")
    try:
        setup_tracing("giftctl", exporter, trace_file)
    except ValueError as error:
        raise CliError(str(error), exit_status=2) from None


def run_rpc(command: RpcCommand, args: argparse.Namespace, prog: str) -> int:
    name = prog.removeprefix("giftctl ")  # "wallet get": the line starts "giftctl: " already
    caller = args.identity
    if command.who is Who.USER and (caller is None or caller.kind is not CallerKind.USER):
        raise CliError(f"{name}: acts for a user: pass --as user:<id>", exit_status=2)
    if command.who is Who.OPERATOR and (caller is None or caller.kind is not CallerKind.OPERATOR):
        raise CliError(f"{name}: is an operator command: pass --as operator:<id>", exit_status=2)
    _setup_tracing()
    try:
        with Session(caller or ANONYMOUS, _targets(args), args.request_id or "") as session:
            try:
                response = command.run(session, args)
            except grpc.RpcError as err:
                raise session.failure(command.service, err) from None
            print(render.show(response, args.json))
    finally:
        from services.runtime.telemetry import shutdown_tracing

        shutdown_tracing()
    return 0


def _up(args: argparse.Namespace) -> int:
    from services.giftctl.suite import Suite, run_until_signalled

    return run_until_signalled(Suite(Path(args.data_dir), _targets(args)))


def _watch(args: argparse.Namespace) -> int:
    from giftcoin.gifting.v1 import gifting_pb2

    from services.giftctl.feed import Follower, check_reachable
    from services.giftctl.gifting_cli import stream_or_video

    target = stream_or_video(None if args.video else args.target_id, args.target_id if args.video else None)
    check_reachable(args.gifting_target, "gifting")

    def on_event(event: gifting_pb2.WatchGiftsResponse) -> None:
        print(render.show(event, args.json), flush=True)

    def on_reconnect(why: str, delay: float) -> None:
        print(f"giftctl: {why}; reconnecting in {delay:.1f}s", file=sys.stderr, flush=True)

    with Session(args.identity or ANONYMOUS, _targets(args)) as session:
        if not args.json:
            print(f"watching {render.target(target)} (Ctrl-C stops)", file=sys.stderr, flush=True)
        follower = Follower(session, target, args.after, on_event, on_reconnect, limit=args.count)
        try:
            follower.run()
        except KeyboardInterrupt:
            follower.stop()
    return 0


def _trace(args: argparse.Namespace) -> int:
    import json

    from services.giftctl import traces

    data_dir = Path(args.data_dir)
    files = traces.span_files(data_dir)
    if not files:
        raise CliError(f"no span files in {data_dir}/ (traces-*.jsonl are written by `giftctl up`)")
    found = traces.gift_traces(traces.read_spans(files), args.gift_id)
    if not found:
        raise CliError(f"no trace of gift {args.gift_id} in {data_dir}/traces-*.jsonl")
    for spans in found:
        roots = traces.build_tree(spans)
        if args.json:
            print(json.dumps({"trace_id": spans[0].trace_id, "spans": [r.to_dict() for r in roots]}))
        else:
            print(f"trace {spans[0].trace_id} (gift {args.gift_id}, {len(spans)} spans)")
            print(traces.render_tree(roots, brief=args.brief))
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from services.reconciler import to_json

    _setup_tracing()
    try:
        report = reconciliation(args)
    finally:
        from services.runtime.telemetry import shutdown_tracing

        shutdown_tracing()
    print(json.dumps(to_json(report), sort_keys=True) if args.json else render.reconciliation(report))
    return 0 if report.ok else DISCREPANCIES_EXIT


def reconciliation(args: argparse.Namespace) -> Report:
    """`giftctl reconcile`'s report (the demo's too, under the demo's tracing); CliError when a service
    cannot be read."""
    from services.reconciler import RECONCILER, ReadFailed, Window, check

    caller = args.identity or RECONCILER
    if caller.kind is CallerKind.USER:
        raise CliError("reconcile reads every service's books: pass --as operator:<id> (or no --as)", exit_status=2)
    now = datetime.now(UTC)
    window = Window(args.since or now - timedelta(hours=24), args.until or now)
    if window.end <= window.start:
        raise CliError("reconcile: --until must come after --since", exit_status=2)
    try:
        token = token_source(caller)
        return check(_targets(args), window, now, token, in_flight=timedelta(seconds=args.in_flight))
    except ReadFailed as failed:
        raise CliError(describe_rpc_error(failed.service, _targets(args)[failed.service], failed.error)) from None


def _demo(args: argparse.Namespace) -> int:
    from services.giftctl.demo import run_demo

    data_dir = Path(tempfile.mkdtemp(prefix="giftcoin-demo-"))
    return run_demo(data_dir, keep_data=args.keep_data, as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv  # known before the arguments parse, for a usage error too
    try:
        args = build_parser().parse_args(argv)
        if hasattr(args, "rpc"):
            return run_rpc(args.rpc, args, args.prog)
        return int(args.handler(args))
    except CliError as error:
        print(error.as_json() if as_json else error.line, file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `giftctl ... | head`
        sys.stderr.close()
        return 0
    except grpc.RpcError as err:  # a call outside a command's own error handling (a bug)
        failed = CliError(f"a call failed: {err.code().name}: {err.details()}")
        print(failed.as_json() if as_json else failed.line, file=sys.stderr)
        return 1
    except Exception as error:  # a bug in giftctl: one line, unless asked for the traceback
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"giftctl: internal error: {type(error).__name__}: {error} (set {DEBUG_ENV}=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
