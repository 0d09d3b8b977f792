"""A small HTTP client over the gateway's own upstream pool, for the
gateway's own calls (JWKS, OAuth metadata): bounded in size and time."""

from __future__ import annotations

import urllib.parse
from contextlib import aclosing

import trio

from agentgw.errors import UpstreamError, UpstreamTimeout
from agentgw.upstream.pool import ConnectionPool, Origin
from agentgw.wire.http import Headers

TIMEOUT = 10.0
MAX_BODY = 1 << 20


async def simple_request(
    pool: ConnectionPool,
    method: bytes,
    url: str,
    headers: Headers | None = None,
    body: bytes = b"",
) -> tuple[int, Headers, bytes]:
    """One request, the whole answer read (at most 1 MiB, 10 s).

    Raises:
        UpstreamError: not an http(s):// URL, unreachable (TLS failures
            included), too slow or too large.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError("upstream unavailable", detail=f"only http(s):// URLs: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    all_headers: Headers = [(b"host", parts.netloc.encode()), *(headers or [])]
    if body or method == b"POST":
        all_headers.append((b"content-length", str(len(body)).encode()))
    https = parts.scheme == "https"
    tls = pool.default_tls() if https else None
    exchange = pool.open_exchange(Origin(parts.hostname, parts.port or (443 if https else 80), tls))
    try:
        with trio.fail_after(TIMEOUT):
            await exchange.send_head(method, target.encode(), all_headers, body)
            response = await exchange.receive_response(TIMEOUT)
            data = bytearray()
            async with aclosing(exchange.body(TIMEOUT)) as chunks:
                async for chunk in chunks:
                    data += chunk
                    if len(data) > MAX_BODY:
                        raise UpstreamError(
                            "upstream protocol error", detail=f"{url}: answer over {MAX_BODY} bytes"
                        )
    except trio.TooSlowError:
        detail = f"{url}: no answer in {TIMEOUT:g}s"
        raise UpstreamTimeout("upstream timeout", detail=detail) from None
    finally:
        exchange.release()
    return response.status, response.headers, bytes(data)
