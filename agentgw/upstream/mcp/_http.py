"""HTTP for the MCP transports: target URLs, one request over the pool,
bounded bodies and SSE streams. Every error names the target."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncGenerator
from contextlib import aclosing

import attrs

from agentgw.config.model import HttpTarget
from agentgw.errors import UpstreamError
from agentgw.tls import ClientTLS
from agentgw.upstream.mcp._common import MAX_MESSAGE_SIZE, named
from agentgw.upstream.pool import ConnectionPool, Exchange, Origin, UpstreamResponse
from agentgw.wire.http import Headers, header_value
from agentgw.wire.sse import SSEDecoder, SSEEvent

# Last-resort bounds of a transport's own waits. A call's wait for its
# answer is bounded by the relay (the route's timeouts,
# ``config.http.upstreamResponseTimeout``), and an idle SSE stream by
# ``config.mcp.streamIdleTimeout``; SHORT_TIMEOUT bounds the exchanges no
# call waits on (notifications, the GET stream's head, DELETE).
STREAM_IDLE_TIMEOUT = 3600.0
SHORT_TIMEOUT = 30.0

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@attrs.frozen
class Url:
    """An upstream URL, and how to speak TLS to its origin (None: plain)."""

    scheme: str
    host: str
    port: int
    target: str  # path and query
    tls: ClientTLS | None = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def parse(cls, url: str) -> Url:
        """Raises ValueError for a URL without scheme or host."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an absolute http(s) or ws(s) URL: {url!r}")
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, target)

    @property
    def origin(self) -> Origin:
        return Origin(self.host, self.port, self.tls)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    def is_same_origin(self, other: Url) -> bool:
        return (self.scheme, self.host, self.port) == (other.scheme, other.host, other.port)

    def resolve(self, reference: str) -> Url:
        """``reference`` (absolute, or relative to this URL) as a Url, with
        this URL's TLS settings."""
        return attrs.evolve(Url.parse(urllib.parse.urljoin(str(self), reference)), tls=self.tls)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


def target_url(spec: HttpTarget, scheme: str = "http") -> str:
    """The URL of an HTTP target: ``host`` itself, or built from a bare host
    name, ``port`` and ``path``."""
    if spec.port is None:
        return spec.host
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return f"{scheme}://{host}:{spec.port}{spec.path or '/'}"


def http_url(target: str, spec: HttpTarget, tls: ClientTLS | None, pool: ConnectionPool) -> Url:
    """The target's URL with its TLS settings: ``tls`` (from ``backendTLS``,
    which means TLS even for an http:// URL), else the pool's default trust
    for https://.

    Raises:
        UpstreamError: (naming the target) not an http(s) URL.
    """
    url = Url.parse(target_url(spec))
    if url.scheme not in ("http", "https"):
        raise UpstreamError(f"target {target}: {url.scheme} upstreams are not supported")
    if tls is None and url.scheme == "https":
        tls = pool.default_tls()
    return attrs.evolve(url, tls=tls)


def media_type(response: UpstreamResponse) -> bytes:
    value = header_value(response.headers, b"content-type") or b""
    return value.split(b";", 1)[0].strip().lower()


def is_event_stream(response: UpstreamResponse) -> bool:
    return media_type(response) == b"text/event-stream"


def is_success(response: UpstreamResponse) -> bool:
    return 200 <= response.status < 300


async def start_request(
    pool: ConnectionPool,
    target: str,
    url: Url,
    method: bytes,
    headers: Headers,
    body: bytes = b"",
) -> Exchange:
    """Send one whole request; the caller must ``release()`` the exchange.

    ``headers`` must not carry Host or Content-Length: they are set here.
    """
    head: Headers = [(b"host", url.authority.encode())]
    if body or method == b"POST":
        head.append((b"content-length", str(len(body)).encode()))
    head.extend(headers)
    ex = pool.open_exchange(url.origin)
    try:
        await ex.send_head(method, url.target.encode(), head, body)
    except UpstreamError as exc:
        ex.release()
        raise named(target, exc) from exc
    except BaseException:
        ex.release()
        raise
    return ex


async def receive_head(target: str, ex: Exchange, timeout: float) -> UpstreamResponse:
    try:
        return await ex.receive_response(timeout)
    except UpstreamError as exc:
        raise named(target, exc) from exc


async def read_body(
    target: str, ex: Exchange, limit: int = MAX_MESSAGE_SIZE, timeout: float = SHORT_TIMEOUT
) -> bytes:
    """The whole body, at most ``limit`` bytes.

    Raises:
        UpstreamError: the body is larger, or the upstream failed.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async with aclosing(ex.body(timeout)) as body:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise UpstreamError(f"target {target}: response larger than {limit} bytes")
                chunks.append(chunk)
    except UpstreamError as exc:
        raise named(target, exc) from exc
    return b"".join(chunks)


async def drain(target: str, ex: Exchange) -> None:
    """Read a small body to its end so the connection can be reused; a
    large or slow one just closes the connection on release."""
    try:
        await read_body(target, ex, limit=65536, timeout=5.0)
    except UpstreamError:
        pass


async def iter_events(
    target: str,
    ex: Exchange,
    decoder: SSEDecoder,
    idle_timeout: float = STREAM_IDLE_TIMEOUT,
) -> AsyncGenerator[SSEEvent, None]:
    """The events of an SSE response body, as they arrive; ``decoder``
    keeps the last event id and retry. Use with ``aclosing``.

    Raises:
        UpstreamError: the upstream failed, or sent an oversized event.
    """
    try:
        async with aclosing(ex.body(idle_timeout)) as body:
            async for chunk in body:
                for event in decoder.feed(chunk):
                    yield event
    except UpstreamError as exc:
        raise named(target, exc) from exc


def new_decoder() -> SSEDecoder:
    return SSEDecoder(max_event_bytes=MAX_MESSAGE_SIZE)
