"""The legacy HTTP+SSE client (MCP 2024-11-05).

How this works: the first ``send`` opens the GET stream, with that send's
headers (the client's Authorization among them), and waits for the
``endpoint`` event: the URL, relative or absolute, to POST messages to. It
must be on the SSE URL's origin. Each message is then POSTed there and
accepted with a 202; every message from the server, responses included,
arrives on the GET stream, which a task of the transport's nursery reads
into the inbox. The session lives as long as that stream: when it ends, the
transport is closed. There is no session id to resume.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager

import attrs
import trio

from agentgw.config.model import HttpTarget
from agentgw.errors import UpstreamError, UpstreamTimeout
from agentgw.tls import ClientTLS
from agentgw.upstream.mcp._common import (
    Inbox,
    Message,
    TransportClosed,
    decode_event,
    encode,
    open_task_nursery,
    printable,
    session_headers,
)
from agentgw.upstream.mcp._http import (
    SHORT_TIMEOUT,
    Url,
    drain,
    http_url,
    is_event_stream,
    is_success,
    iter_events,
    new_decoder,
    receive_head,
    start_request,
)
from agentgw.upstream.pool import ConnectionPool
from agentgw.wire.http import Headers
from agentgw.wire.sse import SSEEvent

logger = logging.getLogger(__name__)

ENDPOINT_TIMEOUT = 10.0


@attrs.define(eq=False)
class SseTransport:
    target: str
    url: Url
    pool: ConnectionPool
    nursery: trio.Nursery
    inbox: Inbox = attrs.field(factory=Inbox.create)
    log_prefix: str = ""
    session_id: str | None = None
    keep_upstream_session: bool = False  # (no upstream session to keep)
    endpoint: Url | None = None
    _client_headers: Headers = attrs.field(factory=list)
    _connect_lock: trio.Lock = attrs.field(factory=trio.Lock)

    def __repr__(self) -> str:
        return f"<SseTransport {self.target} {self.url} endpoint={self.endpoint} {self.inbox!r}>"

    async def send(
        self,
        message: Message,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Raises UpstreamError if the upstream did not accept the message."""
        self.inbox.check_open()
        if headers:
            self._client_headers = session_headers(headers)
        endpoint = await self._connect()
        request_headers: Headers = [(b"content-type", b"application/json")]
        request_headers.extend(self._client_headers)
        ex = await start_request(
            self.pool, self.target, endpoint, b"POST", request_headers, encode(message)
        )
        try:
            response = await receive_head(self.target, ex, SHORT_TIMEOUT)
            await drain(self.target, ex)
        finally:
            ex.release()
        if response.status == 404:
            self.inbox.close(f"target {self.target}: session expired")
            raise TransportClosed(f"target {self.target}: session expired")
        if not is_success(response):
            raise UpstreamError(f"target {self.target}: upstream answered HTTP {response.status}")

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def _connect(self) -> Url:
        async with self._connect_lock:
            self.inbox.check_open()
            if self.endpoint is None:
                self.endpoint = await self.nursery.start(self._serve_stream)
            return self.endpoint

    async def _serve_stream(self, *, task_status: trio.TaskStatus[Url]) -> None:
        """Open the GET stream and report the POST endpoint; then read the
        stream until it ends, and close the transport. Raises (to the
        caller of ``start``) only before the endpoint is known."""
        headers: Headers = [(b"accept", b"text/event-stream")]
        headers.extend(self._client_headers)
        ex = await start_request(self.pool, self.target, self.url, b"GET", headers)
        try:
            with trio.move_on_after(ENDPOINT_TIMEOUT) as timeout:
                response = await receive_head(self.target, ex, ENDPOINT_TIMEOUT)
            if timeout.cancelled_caught:
                raise UpstreamTimeout(f"target {self.target}: no answer to the SSE GET")
            if not is_success(response):
                raise UpstreamError(
                    f"target {self.target}: SSE GET answered HTTP {response.status}"
                )
            if not is_event_stream(response):
                raise UpstreamError(f"target {self.target}: SSE GET answered no event stream")
            async with aclosing(iter_events(self.target, ex, new_decoder())) as events:
                endpoint = None
                with trio.move_on_after(ENDPOINT_TIMEOUT):
                    async for event in events:
                        if event.event == "endpoint":
                            endpoint = self._endpoint_url(event.data.strip())
                            break
                if endpoint is None:
                    raise UpstreamTimeout(f"target {self.target}: no endpoint event")
                logger.debug("%starget %s: endpoint %s", self.log_prefix, self.target, endpoint)
                task_status.started(endpoint)
                try:
                    await self._read_messages(events)
                    reason = f"target {self.target}: SSE stream ended"
                except UpstreamError as exc:
                    reason = exc.reason
        finally:
            ex.release()
        self.inbox.close(reason)

    def _endpoint_url(self, data: str) -> Url:
        try:
            endpoint = self.url.resolve(data)
        except ValueError:
            endpoint = None
        if endpoint is None or not endpoint.is_same_origin(self.url):
            raise UpstreamError(
                f"target {self.target}: endpoint {printable(data, 200)!r} "
                "is not on the SSE URL's origin"
            )
        return endpoint

    async def _read_messages(self, events: AsyncIterator[SSEEvent]) -> None:
        async for event in events:
            if event.event != "message" or not event.data.strip():
                continue
            for message in decode_event(event.data, self.target, self.log_prefix):
                if not await self.inbox.put(message):
                    return

    async def aclose(self) -> None:
        self.inbox.close(f"target {self.target}: transport closed")


@asynccontextmanager
async def open_sse_transport(
    target: str,
    spec: HttpTarget,
    *,
    pool: ConnectionPool,
    tls: ClientTLS | None = None,
    log_prefix: str = "",
) -> AsyncIterator[SseTransport]:
    """A legacy HTTP+SSE client of ``spec``; the stream opens on the first
    ``send``.

    Raises:
        UpstreamError: the URL is not http(s).
    """
    url = http_url(target, spec, tls, pool)
    async with open_task_nursery() as nursery:
        transport = SseTransport(target, url, pool, nursery, log_prefix=log_prefix)
        try:
            yield transport
        finally:
            await transport.aclose()
            nursery.cancel_scope.cancel()
