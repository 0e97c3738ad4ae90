"""The giftctl command line: running one command (an RPC or a local one) and its errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc

from services.giftctl import render
from services.giftctl.command import RpcCommand, Who
from services.giftctl.parser import DISCREPANCIES_EXIT, build_parser, default_data_dir, targets
from services.giftctl.reconcile_cli import reconciliation
from services.giftctl.session import ANONYMOUS, CliError, Session
from services.runtime.auth import CallerKind

__all__ = ["build_parser", "main", "run_rpc"]

DEBUG_ENV = "GIFTCTL_DEBUG"


def _setup_tracing() -> None:
    """With GIFTCOIN_TRACE_EXPORTER set (file: GIFTCOIN_TRACE_FILE, default .data/traces-giftctl.jsonl),
    giftctl's own client spans are exported too, so a gift's trace starts at the call that sent it."""
    exporter = os.environ.get("GIFTCOIN_TRACE_EXPORTER", "none")
    if exporter in ("", "none"):
        return
    from services.runtime.telemetry import setup_tracing

    trace_file = os.environ.get("GIFTCOIN_TRACE_FILE") or str(Path(default_data_dir()) / "traces-giftctl.jsonl")
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
        with Session(caller or ANONYMOUS, targets(args), args.request_id or "") as session:
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

    return run_until_signalled(Suite(Path(args.data_dir), targets(args)))


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

    with Session(args.identity or ANONYMOUS, targets(args)) as session:
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


def _demo(args: argparse.Namespace) -> int:
    from services.giftctl.demo import run_demo

    data_dir = Path(tempfile.mkdtemp(prefix="giftcoin-demo-"))
    return run_demo(data_dir, keep_data=args.keep_data, as_json=args.json)


LOCAL_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _up,
    "watch": _watch,
    "trace": _trace,
    "reconcile": _reconcile,
    "demo": _demo,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv  # known before the arguments parse, for a usage error too
    try:
        args = build_parser().parse_args(argv)
        if hasattr(args, "rpc"):
            return run_rpc(args.rpc, args, args.prog)
        if hasattr(args, "local_command"):
            return int(LOCAL_COMMANDS[args.local_command](args))
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
