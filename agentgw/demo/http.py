"""The demo server over Streamable HTTP, on agentgw's own HTTP/1.1 server.

How this works: every request to ``/mcp`` is checked (Host and Origin
against DNS rebinding, then method, media types, session and protocol
version) before the core sees its message. ``initialize`` creates a session
and names it in ``Mcp-Session-Id``; every later request must carry it (400
without, 404 when unknown). Notifications and replies get 202.

A request the core answers at once gets a JSON response. A request that
keeps running gets an SSE response: its call runs as a task in the server's
nursery and appends its messages to the stream's event log, while the HTTP
handler writes the log out. Event ids are ``<stream>-<seq>``; for clients of
2025-11-25 each stream opens with a priming event (an id, a retry delay, no
data), so a client that lost the stream, or that the server hung up on (SSE
polling), resumes it with a GET carrying ``Last-Event-ID``. Messages about no
request go to the session's standalone stream, opened with GET (the newest
GET takes it over). DELETE ends the session; idle sessions expire. The
legacy HTTP+SSE transport is at ``/sse`` (``agentgw.demo.legacy_sse``).

A POST with no session that carries the 2026-07-28 envelope (``_meta`` with
a protocol version, or an MCP-Protocol-Version header of a revision with no
handshake) is a stateless request: its Mcp-Method and Mcp-Name headers must
match the body (else 400, -32020), and the core answers it in a throwaway
context. Errors get the status the revision gives their code (400, or 404
for an unknown method). A running call streams its notifications on the
response and ends it; the client cancels by going away. A
``subscriptions/listen`` request gets a stream that starts with the
acknowledgment and carries the hub's notifications until the client leaves.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterable
from functools import partial
from typing import Any

import attrs
import trio

from agentgw.config.model import HttpLimits
from agentgw.demo.legacy_sse import LegacySseApp
from agentgw.demo.modern import Hub, StateSealer, is_stateless_request, param_header_problem
from agentgw.demo.runner import CallRunner
from agentgw.demo.server import (
    Answer,
    Cancel,
    DemoSession,
    Done,
    Effect,
    Emit,
    Listen,
    Start,
    StartTask,
    handle_stateless,
)
from agentgw.demo.tools import TOOLS
from agentgw.demo.wire import (
    ERROR_STATUS,
    HEADER_MISMATCH,
    INVALID_REQUEST,
    JSON,
    LOCAL_HOSTS,
    PARSE_ERROR,
    SESSION_NOT_FOUND,
    SSE_KEEPALIVE,
    SUPPORTED_VERSIONS,
    RequestId,
    accepts,
    classify,
    dumps,
    encode_sse,
    error_message,
    event_id,
    id_of,
    is_allowed_origin,
    media_type,
    parse_event_id,
    prefers_sse,
)
from agentgw.errors import ClientGone
from agentgw.server.connection import ClientConnection, ServerRequest

logger = logging.getLogger(__name__)

RETRY_MS = 1000
KEEPALIVE_SECONDS = 15.0
MAX_BODY_BYTES = 4 << 20
MAX_KEPT_STREAMS = 32  # finished streams not read to the end, kept for a late resume
MAX_STANDALONE_EVENTS = 256
MAX_QUEUED = 64  # messages waiting for a slow client on a stateless stream
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@attrs.define(eq=False)
class EventStream:
    """The replayable events of one SSE stream: a POST's or the standalone one.

    It is the ``Sink`` of the call it belongs to. ``writer`` is the token of
    the HTTP response writing it out now, if any.
    """

    key: str
    can_hang_up: bool
    max_events: int | None = None
    events: deque[tuple[int, bytes]] = attrs.field(factory=deque)
    last_seq: int = 0
    is_complete: bool = False
    is_hung_up: bool = False
    writer: object | None = None
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else "open"
        return f"<EventStream {self.key} {state} last={self.last_seq}>"

    def append(self, message: JSON) -> None:
        self.last_seq += 1
        data = encode_sse(dumps(message).decode(), event_id=event_id(self.key, self.last_seq))
        self.events.append((self.last_seq, data))
        if self.max_events is not None and len(self.events) > self.max_events:
            self.events.popleft()
        self.wake()

    def events_after(self, seq: int) -> list[tuple[int, bytes]]:
        if not self.events or self.events[-1][0] <= seq:
            return []
        return [(s, data) for s, data in self.events if s > seq]

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # The Sink interface.
    async def send(self, message: JSON) -> None:
        self.append(message)

    def hang_up(self) -> None:
        if self.can_hang_up:
            self.is_hung_up = True
            self.wake()

    def end(self) -> None:
        self.is_complete = True
        self.wake()


@attrs.define(eq=False)
class HttpSession:
    id: str
    core: DemoSession
    runner: CallRunner
    standalone: EventStream
    last_active: float
    streams: dict[str, EventStream] = attrs.field(factory=dict)
    writers: int = 0
    is_closed: bool = False
    _next_key: int = 1

    def __repr__(self) -> str:
        return (
            f"<HttpSession {self.id[:8]} streams={len(self.streams)} "
            f"writers={self.writers} calls={self.runner.running}>"
        )

    @property
    def can_resume(self) -> bool:
        return self.core.is_at_least("2025-11-25")

    def is_idle(self, now: float, ttl: float) -> bool:
        return self.writers == 0 and self.runner.running == 0 and now - self.last_active > ttl

    def touch(self) -> None:
        self.last_active = trio.current_time()

    def new_stream(self) -> EventStream:
        complete = [key for key, s in self.streams.items() if s.is_complete]
        for key in complete[: max(0, len(complete) - MAX_KEPT_STREAMS)]:
            del self.streams[key]
        stream = EventStream(str(self._next_key), can_hang_up=self.can_resume)
        self._next_key += 1
        self.streams[stream.key] = stream
        return stream

    def find_stream(self, key: str) -> EventStream | None:
        return self.standalone if key == self.standalone.key else self.streams.get(key)

    def forget(self, stream: EventStream) -> None:
        if self.streams.get(stream.key) is stream:
            del self.streams[stream.key]

    def close(self) -> None:
        self.is_closed = True
        self.runner.cancel_all()
        for stream in (self.standalone, *self.streams.values()):
            stream.wake()


async def _drop_unrelated(message: JSON) -> None:
    logger.debug("no session stream for %s", message.get("method"))


@attrs.define(eq=False)
class _ChannelSink:
    """A stateless call's ``Sink``: its messages, for the response stream."""

    send_channel: trio.MemorySendChannel[JSON]
    receive: trio.MemoryReceiveChannel[JSON]

    async def send(self, message: JSON) -> None:
        try:
            await self.send_channel.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; the call is being cancelled

    def hang_up(self) -> None:
        pass  # 2026-07-28 streams are not resumed

    def end(self) -> None:
        self.send_channel.close()


def _is_closed(receive: trio.MemoryReceiveChannel[JSON]) -> bool:
    return receive.statistics().open_send_channels == 0


def _is_stateless(message: JSON, version: str | None) -> bool:
    """A request of 2026-07-28 or later: the envelope, or a header naming a
    revision with no handshake (a request of an older revision is not)."""
    if is_stateless_request(message):
        return True
    return version is not None and version not in SUPPORTED_VERSIONS


# The header that names a request's target, and where the body has it (SEP-2243).
_NAME_FIELD = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}


def _routing_problem(req: ServerRequest, message: JSON, version: str | None) -> str | None:
    """Why the standard headers do not match the body, or None."""
    if version is None:
        return "missing MCP-Protocol-Version header"
    method = message["method"]
    header = _header(req, b"mcp-method")
    if header is None or header.strip() != method:
        return "Mcp-Method header does not match the request"
    params = message.get("params")
    field = _NAME_FIELD.get(method)
    value = params.get(field) if field is not None and isinstance(params, dict) else None
    if isinstance(value, str):
        name = _header(req, b"mcp-name")
        if name is None or name.strip() != value:
            return "Mcp-Name header does not match the request"
    tool = TOOLS.get(value) if method == "tools/call" and isinstance(value, str) else None
    if tool is not None:
        assert isinstance(params, dict)
        lookup = partial(_header_str, req)
        return param_header_problem(tool.input_schema, params.get("arguments"), lookup)
    return None


def _header_str(req: ServerRequest, name: str) -> str | None:
    return _header(req, name.encode())


def _header(req: ServerRequest, name: bytes) -> str | None:
    values = [v for n, v in req.headers if n == name]
    return b", ".join(values).decode("latin-1") if values else None


async def _json(
    req: ServerRequest, status: int, message: JSON, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await req.respond(status, dumps(message), headers, content_type=b"application/json")


async def _refuse(
    req: ServerRequest, status: int, code: int, text: str, request_id: RequestId | None = None
) -> None:
    req.record.error = text
    await _json(req, status, error_message(request_id, code, text))


@attrs.define(eq=False)
class DemoHttpApp:
    """The ``/mcp`` endpoint: sessions and their streams.

    Args:
        nursery: where calls run; it outlives every connection.
        allowed_hosts: host names accepted in Host and Origin headers; None
            accepts any (no DNS-rebinding protection).
    """

    nursery: trio.Nursery
    allowed_hosts: frozenset[str] | None = LOCAL_HOSTS
    session_ttl: float = 1800.0
    max_sessions: int = 10000
    sessions: dict[str, HttpSession] = attrs.field(factory=dict)
    hub: Hub = attrs.field(factory=lambda: Hub(StateSealer(time.time)))
    stateless_calls: CallRunner = attrs.field(init=False)
    legacy: LegacySseApp = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.stateless_calls = CallRunner(self.nursery, _drop_unrelated)
        self.legacy = LegacySseApp(self.nursery)

    def __repr__(self) -> str:
        return (
            f"<DemoHttpApp sessions={len(self.sessions)} "
            f"stateless_calls={self.stateless_calls.running} listeners={self.hub.listening}>"
        )

    async def expire_sessions(self) -> None:
        """Close sessions idle for ``session_ttl`` and forget expired tasks;
        never returns."""
        while True:
            await trio.sleep(min(60.0, self.session_ttl / 2))
            self.hub.tasks.expire()
            now = trio.current_time()
            for session in list(self.sessions.values()):
                if session.is_idle(now, self.session_ttl):
                    logger.info("session %s... expired", session.id[:8])
                    self._end_session(session)

    async def handle(self, req: ServerRequest) -> None:
        if req.path not in ("/mcp", "/sse", "/messages"):
            await req.respond(404, "not found: the MCP endpoint is /mcp\n")
            return
        origin = _header(req, b"origin")
        if self.allowed_hosts is not None and not is_allowed_origin(
            req.host or None, origin, self.allowed_hosts
        ):
            text = "forbidden: Host or Origin is not an allowed host (DNS rebinding protection)"
            await _refuse(req, 403, INVALID_REQUEST, text)
            return
        if req.path != "/mcp":
            await self._legacy_sse(req)
            return
        if req.method == "POST":
            await self._post(req)
        elif req.method == "GET":
            await self._get(req)
        elif req.method == "DELETE":
            await self._delete(req)
        else:
            await req.respond(405, "method not allowed\n", [(b"allow", b"GET, POST, DELETE")])

    async def _legacy_sse(self, req: ServerRequest) -> None:
        if req.path == "/sse" and req.method == "GET":
            await self.legacy.open_stream(req)
        elif req.path == "/messages" and req.method == "POST":
            await self.legacy.post(req)
        else:
            allow = b"GET" if req.path == "/sse" else b"POST"
            await req.respond(405, "method not allowed\n", [(b"allow", allow)])

    # -- POST: one JSON-RPC message

    async def _post(self, req: ServerRequest) -> None:
        if media_type(_header(req, b"content-type")) != "application/json":
            await _refuse(req, 415, INVALID_REQUEST, "Content-Type must be application/json")
            return
        accept = _header(req, b"accept")
        if not (accepts(accept, "application/json") and accepts(accept, "text/event-stream")):
            text = "Accept must include application/json and text/event-stream"
            await _refuse(req, 406, INVALID_REQUEST, text)
            return
        body = await req.read_body()
        try:
            message: Any = json.loads(body)
        except ValueError:
            await _refuse(req, 400, PARSE_ERROR, "parse error: the body is not JSON")
            return
        kind = classify(message)
        if kind == "invalid":
            text = "batches are not supported" if isinstance(message, list) else "invalid message"
            await _refuse(req, 400, INVALID_REQUEST, text, id_of(message))
            return
        method = message.get("method")
        if method is not None:
            req.record.extra["mcp.method"] = method
        version = _header(req, b"mcp-protocol-version")
        if _header(req, b"mcp-session-id") is None and _is_stateless(message, version):
            await self._stateless(req, message, version)
            return
        if kind == "request" and method == "initialize":
            await self._initialize(req, message)
            return
        session = await self._session(req, id_of(message))
        if session is None:
            return
        outcome = session.core.handle(message)
        if kind != "request":
            session.runner.apply(outcome)
            await req.respond(202, b"")
            return
        if isinstance(outcome, Answer):
            await self._answer(req, session, outcome.message)
            return
        assert isinstance(outcome, Start)
        # Messages about no request go to the standalone stream at once; only
        # a call with messages of its own needs an SSE response.
        call = outcome.call
        effect: Effect = outcome.effect
        while isinstance(effect, Emit) and not effect.is_related:
            session.standalone.append(effect.message)
            effect = call.advance()
        if isinstance(effect, Done):
            await self._answer(req, session, effect.message)
            return
        stream = session.new_stream()
        session.runner.start(call, effect, stream)
        await self._pump(req, session, stream, 0, is_new=True)

    async def _answer(self, req: ServerRequest, session: HttpSession, message: JSON) -> None:
        """A response that is ready: JSON, or a one-event stream for a client
        that ranks ``text/event-stream`` first in its Accept header."""
        if not prefers_sse(_header(req, b"accept")):
            await _json(req, 200, message)
            return
        stream = session.new_stream()
        stream.append(message)
        stream.end()
        await self._pump(req, session, stream, 0, is_new=True)

    # -- POST of 2026-07-28: no session

    async def _stateless(self, req: ServerRequest, message: JSON, version: str | None) -> None:
        if classify(message) != "request":
            await req.respond(202, b"")  # this revision has no client notifications to act on
            return
        problem = _routing_problem(req, message, version)
        if problem is not None:
            await _refuse(req, 400, HEADER_MISMATCH, problem, message["id"])
            return
        outcome = handle_stateless(self.hub, message, version)
        if isinstance(outcome, StartTask):
            self.stateless_calls.start_task(outcome.call, outcome.record, outcome.effect)
            outcome = Answer(outcome.message)
        if isinstance(outcome, Answer):
            error = outcome.message.get("error")
            if error is not None:
                req.record.error = error["message"]
                status = ERROR_STATUS.get(error["code"], 200)
                await _json(req, status, outcome.message)
            elif prefers_sse(_header(req, b"accept")):
                await req.send_head(200, SSE_HEADERS)
                await req.send_data(encode_sse(dumps(outcome.message).decode()))
                await req.end()
            else:
                await _json(req, 200, outcome.message)
        elif isinstance(outcome, Listen):
            await self._listen(req, outcome)
        else:
            assert isinstance(outcome, Start)
            await self._stream_call(req, outcome)

    async def _stream_call(self, req: ServerRequest, outcome: Start) -> None:
        """Run a stateless call, streaming its messages; the client cancels
        it by going away."""
        sink = _ChannelSink(*trio.open_memory_channel[JSON](MAX_QUEUED))
        self.stateless_calls.start(outcome.call, outcome.effect, sink)
        try:
            await req.send_head(200, SSE_HEADERS)
            await self._drain(req, sink.receive)
            await req.end()
        finally:
            self.stateless_calls.apply(Cancel(outcome.call))
            sink.receive.close()

    async def _listen(self, req: ServerRequest, listen: Listen) -> None:
        send, receive = trio.open_memory_channel[JSON](MAX_QUEUED)

        def deliver(message: JSON) -> None:
            try:
                send.send_nowait(message)
            except trio.WouldBlock:
                logger.warning("subscription %r is not reading; closing it", listen.request_id)
                send.close()
            except trio.ClosedResourceError:
                pass

        token = self.hub.listen(listen.request_id, listen.filter, deliver)
        try:
            await req.send_head(200, SSE_HEADERS)
            await req.send_data(encode_sse(dumps(listen.acknowledgment).decode()))
            await self._drain(req, receive)
            await req.end()
        finally:
            self.hub.unlisten(token)
            send.close()
            receive.close()

    async def _drain(self, req: ServerRequest, receive: trio.MemoryReceiveChannel[JSON]) -> None:
        """Write messages as SSE events until the channel closes; a comment
        keeps an idle stream open; raises ClientGone when the client leaves."""
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await req.watch_disconnect()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            while True:
                with trio.move_on_after(KEEPALIVE_SECONDS) as idle:
                    try:
                        message = await receive.receive()
                    except trio.EndOfChannel:
                        break
                if idle.cancelled_caught:
                    await req.send_data(SSE_KEEPALIVE)
                    continue
                await req.send_data(encode_sse(dumps(message).decode()))
            nursery.cancel_scope.cancel()
        if nursery.cancel_scope.cancelled_caught and not _is_closed(receive):
            raise ClientGone("client closed the event stream")

    async def _initialize(self, req: ServerRequest, message: JSON) -> None:
        if _header(req, b"mcp-session-id") is not None:
            await _refuse(req, 400, INVALID_REQUEST, "initialize starts a session", message["id"])
            return
        if len(self.sessions) >= self.max_sessions:
            await _refuse(req, 503, INVALID_REQUEST, "too many sessions", message["id"])
            return
        core = DemoSession()
        outcome = core.handle(message)
        assert isinstance(outcome, Answer)
        if "error" in outcome.message:
            await _json(req, 400, outcome.message)
            return
        session = self.new_session(core)
        await _json(req, 200, outcome.message, [(b"mcp-session-id", session.id.encode())])

    def new_session(self, core: DemoSession) -> HttpSession:
        standalone = EventStream("0", can_hang_up=False, max_events=MAX_STANDALONE_EVENTS)

        async def broadcast(message: JSON) -> None:
            standalone.append(message)

        runner = CallRunner(self.nursery, broadcast)
        session_id = secrets.token_hex(16)
        session = HttpSession(session_id, core, runner, standalone, trio.current_time())
        self.sessions[session_id] = session
        return session

    async def _session(
        self, req: ServerRequest, request_id: RequestId | None
    ) -> HttpSession | None:
        """The request's session, or None after answering 400, 404 or 400
        for an unsupported protocol version."""
        session_id = _header(req, b"mcp-session-id")
        if session_id is None:
            text = "missing Mcp-Session-Id header: send initialize first"
            await _refuse(req, 400, INVALID_REQUEST, text, request_id)
            return None
        session = self.sessions.get(session_id)
        if session is None:
            await _refuse(req, 404, SESSION_NOT_FOUND, "session not found", request_id)
            return None
        version = _header(req, b"mcp-protocol-version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            text = f"unsupported MCP-Protocol-Version {version!r}"
            await _refuse(req, 400, INVALID_REQUEST, text, request_id)
            return None
        session.touch()
        return session

    # -- GET: the standalone stream, or resume a stream

    async def _get(self, req: ServerRequest) -> None:
        if not accepts(_header(req, b"accept"), "text/event-stream"):
            await _refuse(req, 406, INVALID_REQUEST, "Accept must include text/event-stream")
            return
        session = await self._session(req, None)
        if session is None:
            return
        last_event_id = _header(req, b"last-event-id")
        if last_event_id is None:
            stream = session.standalone
            await self._pump(req, session, stream, stream.last_seq, is_new=True)
            return
        parsed = parse_event_id(last_event_id)
        resumed = session.find_stream(parsed[0]) if parsed is not None else None
        if parsed is None or resumed is None:
            await _refuse(req, 400, INVALID_REQUEST, "unknown Last-Event-ID")
            return
        resumed.is_hung_up = False
        await self._pump(req, session, resumed, parsed[1], is_new=False)

    # -- DELETE: end the session

    async def _delete(self, req: ServerRequest) -> None:
        session = await self._session(req, None)
        if session is None:
            return
        self._end_session(session)
        await req.respond(200, b"")

    def _end_session(self, session: HttpSession) -> None:
        session.close()
        self.sessions.pop(session.id, None)

    # -- writing a stream out

    async def _pump(
        self,
        req: ServerRequest,
        session: HttpSession,
        stream: EventStream,
        after: int,
        *,
        is_new: bool,
    ) -> None:
        """Answer with ``stream``'s events after ``after`` until it completes,
        the server hangs up, another writer takes over or the client leaves."""
        token = object()
        stream.writer = token
        session.writers += 1
        gone = False
        try:
            await req.send_head(200, SSE_HEADERS)
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal gone
                    await req.watch_disconnect()
                    gone = True
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                try:
                    if is_new and session.can_resume:
                        key = event_id(stream.key, after)
                        await req.send_data(encode_sse("", event_id=key, retry_ms=RETRY_MS))
                    after = await self._write_events(req, session, stream, after, token)
                except ClientGone:
                    gone = True
                nursery.cancel_scope.cancel()
            if gone:
                raise ClientGone("client closed the event stream")
            await req.end()
            if stream.is_complete and after >= stream.last_seq:
                session.forget(stream)
        finally:
            session.writers -= 1
            session.touch()
            if stream.writer is token:
                stream.writer = None

    async def _write_events(
        self,
        req: ServerRequest,
        session: HttpSession,
        stream: EventStream,
        cursor: int,
        token: object,
    ) -> int:
        while True:
            if session.is_closed or stream.writer is not token:
                return cursor
            batch = stream.events_after(cursor)
            if batch:
                cursor = batch[-1][0]
                await req.send_data(b"".join(data for _, data in batch))
                continue
            if stream.is_complete:
                return cursor
            if stream.is_hung_up:
                stream.is_hung_up = False
                return cursor
            with trio.move_on_after(KEEPALIVE_SECONDS) as scope:
                await stream.wait_changed()
            if scope.cancelled_caught:
                await req.send_data(SSE_KEEPALIVE)


async def serve_http(
    port: int,
    host: str = "127.0.0.1",
    *,
    allowed_hosts: Iterable[str] | None = LOCAL_HOSTS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the demo over Streamable HTTP at ``/mcp``; never returns.

    Args:
        port: TCP port; 0 picks a free one.
        host: address to listen on.
        allowed_hosts: names accepted in Host/Origin headers (DNS-rebinding
            protection); None accepts any.
        task_status: reports the listeners once they accept connections.
    """
    limits = HttpLimits(max_body_bytes=MAX_BODY_BYTES)
    async with trio.open_nursery() as nursery:
        allowed = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        app = DemoHttpApp(nursery, allowed)
        nursery.start_soon(app.expire_sessions)

        async def serve_one(stream: trio.SocketStream) -> None:
            try:
                peer = stream.socket.getpeername()
            except OSError:
                await stream.aclose()
                return
            client = (str(peer[0]), int(peer[1]))
            await ClientConnection(stream, client, "demo", limits, app.handle).serve()

        listeners = await nursery.start(partial(trio.serve_tcp, serve_one, port, host=host))
        task_status.started(listeners)
