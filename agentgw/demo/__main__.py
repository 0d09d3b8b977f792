"""``python -m agentgw.demo``: the demo MCP server on stdio, or on HTTP."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio

from agentgw.demo.http import serve_http
from agentgw.demo.stdio import serve_stdio
from agentgw.demo.wire import LOCAL_HOSTS
from agentgw.observability.logs import setup_logging

logger = logging.getLogger("agentgw.demo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agentgw.demo",
        description="A demo MCP server: newline-delimited JSON-RPC on stdin/stdout "
        "(logs on stderr), or Streamable HTTP at /mcp with --http.",
    )
    p.add_argument(
        "--http",
        type=int,
        metavar="PORT",
        help="serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio (0: a free port)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address for --http (default 127.0.0.1)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept this name in Host and Origin headers; only localhost names are "
        "accepted by default (DNS-rebinding protection); '*' accepts any",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="stderr log level (default info)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_handler = setup_logging("text", args.log_level)
    try:
        if args.http is None:
            logger.info("serving MCP on stdio")
            trio.run(serve_stdio)
        else:
            trio.run(_run_http, args)
    except KeyboardInterrupt:
        return 130
    finally:
        log_handler.close()
    return 0


async def _run_http(args: argparse.Namespace) -> None:
    allowed = None if "*" in args.allow_host else LOCAL_HOSTS | set(args.allow_host)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            serve = partial(serve_http, args.http, args.host, allowed_hosts=allowed)
            listeners = await nursery.start(serve)
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"agentgw-demo listening on http://{shown}:{port}/mcp", flush=True)
            if allowed is not None and args.host not in ("127.0.0.1", "::1", "localhost"):
                logger.warning(
                    "listening on %s, but only localhost names are accepted in Host headers; "
                    "add --allow-host NAME for the names clients use",
                    args.host,
                )
            async for signum in signals:
                logger.info("%s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    sys.exit(main())
