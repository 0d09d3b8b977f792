"""The ``agentgw`` command: parse the arguments, load the config, and run
the gateway (one ``trio.run``), or its workers under a supervisor
(``agentgw.workers``)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from agentgw._version import __version__
from agentgw.app import Gateway, prepare
from agentgw.config.load import effective_binds
from agentgw.errors import ConfigError
from agentgw.observability.logs import setup_logging
from agentgw.reload import SESSION_KEY_ENV, ConfigSource, with_session_key_from_env
from agentgw.workers import MAX_WORKERS, WorkerSpec, stop_when_orphaned, supervise

__all__ = ["SESSION_KEY_ENV", "main", "with_session_key_from_env"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentgw", description="An MCP gateway on Trio.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-f", "--file", help="config file (YAML or JSON)")
    src.add_argument("-c", "--config", help="inline config (YAML or JSON)")
    p.add_argument("--validate-only", action="store_true", help="check the config and exit")
    p.add_argument("--log-format", choices=["text", "json"], help="override config.logging.format")
    p.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        metavar="N",
        help=f"serve with N processes sharing the ports (SO_REUSEPORT; 1 to {MAX_WORKERS})",
    )
    p.add_argument("--version", action="version", version=f"agentgw {__version__}")
    return p


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_WORKERS}, got {text!r}")
    return count


def _without_workers(argv: Sequence[str]) -> list[str]:
    """The arguments a worker gets: the parent's, without ``--workers``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


async def _serve_then_stop(gw: Gateway, scope: trio.CancelScope, *, task_status: Any) -> None:
    await gw.serve(task_status=task_status)
    scope.cancel()


async def _on_signals(signals: Any, gw: Gateway, scope: trio.CancelScope) -> None:
    count = 0
    async for signum in signals:
        if signum == signal.SIGHUP:
            gw.request_reload()
            continue
        count += 1
        if count == 1:
            print(f"agentgw: {signal.Signals(signum).name}, draining", file=sys.stderr, flush=True)
            gw.shutdown()
        else:
            scope.cancel()


async def _run(gw: Gateway) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(_serve_then_stop, gw, nursery.cancel_scope)
            for addr in addresses:
                for name in addr.listeners:
                    print(
                        f"agentgw: listener {name} listening on {addr.scheme}://{addr}",
                        flush=True,
                    )
            for name, (host, port) in gw.management_addresses.items():
                shown = f"[{host}]" if ":" in host else host
                print(f"agentgw: {name} server on http://{shown}:{port}", flush=True)
            nursery.start_soon(_on_signals, signals, gw, nursery.cancel_scope)
            if gw.worker is not None:
                nursery.start_soon(stop_when_orphaned, gw.shutdown)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        worker = WorkerSpec.from_env()
    except ValueError as exc:
        print(f"agentgw: {exc}", file=sys.stderr)
        return 2
    source = ConfigSource(args.file, args.config, args.log_format)
    try:
        compiled = prepare(source)
    except ConfigError as exc:
        print("invalid configuration:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    if args.validate_only:
        print("configuration is valid")
        return 0
    config = compiled.config
    if args.workers > 1 and worker is None:
        ephemeral = [b.port for b in effective_binds(config) if b.port == 0]
        if ephemeral:
            print("agentgw: --workers needs fixed ports (a bind has port 0)", file=sys.stderr)
            return 2
        key = config.config.session.key if config.config.session else None
        return supervise(_without_workers(argv), args.workers, key)
    # Until the signal handlers are in place, a SIGHUP (a reload asked too
    # early) must not kill the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    gw = Gateway(compiled, worker=worker, source=source)
    log_handler = setup_logging(config.config.logging.format, config.config.logging.level)
    try:
        trio.run(_run, gw)
    except OSError as exc:
        print(f"agentgw: cannot listen: {exc}", file=sys.stderr)
        return 1
    finally:
        log_handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
