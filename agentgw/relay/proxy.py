"""The streaming reverse proxy for ``host`` backends.

How this works: the request head goes upstream through the one header
filter (``wire.http.forward_headers``) and the route's header rules; the body
is streamed chunk by chunk. Once the client's body is done, a client that
goes away cancels the exchange (``ServerRequest.run_watched``). The response
is streamed back chunk by chunk: each chunk is written to the client before
the next is read from the upstream, so a client that stops reading pauses the
upstream read and memory stays flat. The upstream connection is pooled only
if the exchange completed.

An upstream failure answers the client with the error's generic reason
("upstream protocol error"); the upstream's address and the cause go to the
access log's ``error`` only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import aclosing, nullcontext

import h11
import trio

from agentgw.errors import AbortResponse, UpstreamError, UpstreamTimeout
from agentgw.observability.tracing import NOOP_CALL
from agentgw.policy.pipeline import modify_headers
from agentgw.policy.pipeline import response_headers as route_response_headers
from agentgw.relay.context import RequestContext
from agentgw.server.connection import ServerRequest
from agentgw.upstream.pool import ConnectionPool, Exchange, Origin
from agentgw.wire.http import Headers, header_value, is_websocket_upgrade, strip_hop_by_hop

logger = logging.getLogger(__name__)

SMALL_BODY = 65536


async def proxy_request(
    ctx: RequestContext,
    pool: ConnectionPool,
    origin: Origin,
    *,
    response_timeout: float,
) -> None:
    """Forward the request to ``origin`` and stream the answer back.

    Upstream failures before the response started become 502/503/504 with a
    short body; after it started, the client's connection is aborted.
    """
    req, policies = ctx.req, ctx.policies
    timeout = policies.timeout
    if timeout is not None and timeout.backend_request_timeout is not None:
        response_timeout = timeout.backend_request_timeout
    request_timeout = timeout.request_timeout if timeout is not None else None
    upgrade = is_websocket_upgrade(req.headers)
    headers = modify_headers(policies.request_headers, ctx.upstream_headers(keep_upgrade=upgrade))

    def answer_headers(headers: Headers) -> Headers:
        return route_response_headers(policies, ctx.view, headers)

    tracing = req.tracing()
    with (
        nullcontext(NOOP_CALL)
        if tracing is None
        else tracing.upstream_call(req.span, "Http", _span_attributes(origin))
    ) as call:
        headers = call.headers(headers)
        exchange = pool.open_exchange(origin)
        try:
            with trio.fail_after(request_timeout) if request_timeout else nullcontext():
                await _exchange(req, exchange, headers, answer_headers, response_timeout)
            call.finish(status=req.status)
        except trio.TooSlowError:
            detail = f"{origin[0]}:{origin[1]}: no complete answer in {request_timeout:g}s"
            call.finish(error="upstream timeout")
            await _upstream_failed(req, UpstreamTimeout("upstream timeout", detail=detail))
        except UpstreamError as exc:
            call.finish(error=exc.reason)
            await _upstream_failed(req, exc)
        finally:
            exchange.release()


def _span_attributes(origin: Origin) -> dict[str, str | int]:
    host, port, tls = origin
    return {
        "agentgateway.outbound.kind": "Primary",
        "agentgateway.outbound.subtype": "Http",
        "server.address": host,
        "server.port": port,
        "url.scheme": "https" if tls else "http",
    }


async def _upstream_failed(req: ServerRequest, exc: UpstreamError) -> None:
    req.record.error = exc.log_text
    logger.debug("upstream failure: %s", exc.log_text)
    if req.is_response_started:
        raise AbortResponse(exc.log_text) from exc
    await req.respond(exc.status, exc.http_body(), [(b"connection", b"close"), *exc.headers])


async def relay_to_worker(
    req: ServerRequest, pool: ConnectionPool, path: str, facts: Headers
) -> bool:
    """Relay ``req`` as it came, streaming both ways, to the sibling worker
    listening on the Unix socket ``path`` (see ``agentgw.workers``), with
    ``facts``: headers only that socket trusts (the client's address, its
    TLS connection); a client's own headers of those names are dropped.

    Returns:
        False if that worker is not there (nothing was sent).
    """
    upgrade = is_websocket_upgrade(req.headers)
    named = {name for name, _ in facts}
    headers = [
        (name, value)
        for name, value in strip_hop_by_hop(req.headers, keep_upgrade=upgrade)
        if name not in named
    ]
    headers.extend(facts)
    exchange = pool.open_exchange(Origin(path, 0))
    try:
        try:
            await exchange.connect()
        except UpstreamError:
            return False
        await _exchange(req, exchange, headers, lambda headers: headers, math.inf)
    except UpstreamError as exc:
        await _upstream_failed(req, exc)
    finally:
        exchange.release()
    return True


async def _exchange(
    req: ServerRequest,
    exchange: Exchange,
    headers: Headers,
    answer_headers: Callable[[Headers], Headers],
    response_timeout: float,
) -> None:
    if req.head.chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    if header_value(headers, b"host") is None:
        # An HTTP/1.0 request may come without Host; HTTP/1.1 needs one:
        # name the upstream itself, as nginx does by default.
        host, port, _ = exchange.origin
        authority = (
            "localhost" if port == 0 else f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        )
        headers.insert(0, (b"host", authority.encode()))
    method = req.method.encode()
    length = req.head.content_length
    if not req.head.chunked and (length or 0) <= SMALL_BODY:
        # Small bodies go out with the head in one write.
        body = await req.read_body() if length else b""
        await exchange.send_head(method, req.target, headers, body)
    else:
        await exchange.send_head(method, req.target, headers)
        async with aclosing(req.body()) as chunks:
            async for chunk in chunks:
                await exchange.send_body(chunk)
        await exchange.end_body()

    response_head: list[Headers] = []

    async def forward() -> None:
        response = await exchange.receive_response(response_timeout)
        out = answer_headers(
            strip_hop_by_hop(response.headers, keep_upgrade=response.status == 101)
        )
        if response.status == 101:
            response_head.append(out)
            return
        # A Content-Length response goes out with its first bytes in one
        # write; a stream (SSE, chunked) gets its head at once.
        framed = header_value(response.headers, b"content-length") is not None
        try:
            await req.send_head(response.status, out, response.reason, flush=not framed)
            async with aclosing(exchange.body(response_timeout)) as body:
                async for chunk in body:
                    await req.send_data(chunk)
            await req.end()
        except h11.LocalProtocolError as exc:
            # The pool refuses what could be framed two ways; this is the
            # last guard: an answer we cannot relay as it came is never sent.
            raise UpstreamError(
                "upstream protocol error", detail=f"cannot relay the response: {exc}"
            ) from exc

    await req.run_watched(forward)
    if response_head:
        await _tunnel(req, exchange, response_head[0])


async def _tunnel(req: ServerRequest, exchange: Exchange, headers: Headers) -> None:
    """Relay raw bytes both ways after a 101 (WebSocket upgrade)."""
    await req.send_informational(101, headers)
    req.record.status = 101
    upstream, upstream_extra = exchange.take_stream()
    client, client_extra = req.take_stream()
    try:
        if upstream_extra:
            await client.send_all(upstream_extra)
        if client_extra:
            await upstream.send_all(client_extra)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, client, upstream, nursery.cancel_scope)
            nursery.start_soon(_pipe, upstream, client, nursery.cancel_scope)
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await upstream.aclose()


async def _pipe(src: trio.abc.Stream, dst: trio.abc.Stream, done: trio.CancelScope) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()
