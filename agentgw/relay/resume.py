"""Resumable SSE streams of a Streamable HTTP session (2025-11-25, SEP-1699).

How this works: every SSE stream the gateway serves in a session (a POST's
answer, a GET stream) has an ``EventLog`` (``mcp/replay.py``) in the
session's ``SessionStreams``. Each message is numbered and kept there before
it is written, so a client that lost the stream, or that the gateway hung up
on, reconnects with a GET carrying ``Last-Event-ID`` and gets what followed
that event, once: the log is written out from that point, and followed until
the call's response (a POST's stream) or for good (a GET stream). A stream
starts with a priming event (its id, empty data) and a ``retry`` delay, for
clients of 2025-11-25 and later.

A POST's stream is fed by its call in the request's own task
(``ResumableOutbox``). Once it started, a client that leaves no longer
cancels the call: the call runs to its response (bounded by its timeouts)
into the log (cancelled if nobody resumes it within ``SseSettings.resume_window``).
The gateway hangs up a stream itself (the client polls) when
the upstream hung up its own stream mid-call (``upstream/mcp/hangup.py``),
or when ``sse.poll_after`` passed (checked at each event and keep-alive).

A stream has one writer at a time: a resume takes the stream over, and the
response that wrote it before stops writing. The logs are bounded (events,
bytes, streams per session) and go with their session.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import OrderedDict

import attrs
import trio

from agentgw.errors import ClientError, ClientGone
from agentgw.mcp.replay import EventLog, has_resumable_streams, parse_event_id
from agentgw.relay.outbox import SSE_HEADERS, Message, Outbox, StreamWaits, dumps, respond_json
from agentgw.server.connection import ServerRequest
from agentgw.server.watch import keep_working
from agentgw.wire.sse import encode_comment

logger = logging.getLogger(__name__)

MAX_STREAMS = 64
# A call whose stream nobody reads (the client left and did not resume) is
# cancelled after this long.


@attrs.frozen
class SseSettings:
    """``config.mcp``'s SSE keys, as the relay uses them."""

    retry_ms: int = 1000
    max_events: int = 1000
    max_bytes: int = 1 << 20
    # Hang up a POST's stream once it is open this long (seconds); None: never.
    poll_after: float | None = None
    # How long a call whose client left runs on, for a client that resumes.
    resume_window: float = 300.0


@attrs.define(eq=False)
class LiveStream:
    """One resumable stream: its log, and who writes it out now."""

    log: EventLog
    is_get: bool = False
    writer: object = None
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def __repr__(self) -> str:
        return f"<LiveStream {self.log!r} get={self.is_get}>"

    def append(self, message: Message, session: str) -> bytes:
        event, fell = self.log.append(dumps(message).decode())
        # Said on the first loss, then once per buffer's worth.
        before, every = self.log.dropped - fell, self.log.max_events
        if fell and (before == 0 or before // every != self.log.dropped // every):
            logger.info(
                "session %s: SSE stream %s keeps %d events: %d older events can no longer be"
                " resumed (%d in all)",
                session,
                self.log.key,
                self.log.max_events,
                fell,
                self.log.dropped,
            )
        self.notify()
        return event

    def complete(self) -> None:
        if not self.log.is_complete:
            self.log.complete()
            self.notify()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> bool:
        await self._changed.wait()
        return True


@attrs.define(eq=False)
class SessionStreams:
    """The resumable streams of one session, at most ``limit`` (the oldest
    complete ones go first)."""

    limit: int = MAX_STREAMS
    _streams: OrderedDict[str, LiveStream] = attrs.field(factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._streams)

    def new(self, settings: SseSettings, *, is_get: bool = False) -> LiveStream:
        while len(self._streams) >= self.limit:
            done = [k for k, s in self._streams.items() if s.log.is_complete]
            key = done[0] if done else next(iter(self._streams))
            # A running one goes on for its reader, but can no longer be resumed.
            del self._streams[key]
        key = secrets.token_urlsafe(6)
        log = EventLog(key, max_events=settings.max_events, max_bytes=settings.max_bytes)
        stream = LiveStream(log, is_get=is_get)
        self._streams[key] = stream
        return stream

    def get(self, key: str) -> LiveStream | None:
        return self._streams.get(key)

    def close(self) -> None:
        """The session ended: every stream is over."""
        for stream in self._streams.values():
            stream.complete()
        self._streams.clear()


@attrs.define(eq=False)
class ResumableOutbox(Outbox):
    """The answer to a POST in a session: JSON when the response comes
    first (and the client does not rank SSE first), else a resumable SSE
    stream."""

    req: ServerRequest
    streams: SessionStreams
    settings: SseSettings
    session: str  # for log lines
    can_resume: bool = False
    prefers_sse: bool = False
    stream: LiveStream | None = None
    # Our response still carries the stream (the client is there, nobody
    # took it over, the gateway did not hang up).
    is_attached: bool = False
    hang_up_at: float = math.inf
    left_at: float | None = None  # when the client left, if nobody resumed since
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    def hang_up_soon(self) -> None:
        """The upstream hung up its stream: hang up ours at the next event."""
        if self.can_resume:
            self.hang_up_at = -math.inf

    async def _start(self) -> LiveStream:
        if self.stream is not None:
            return self.stream
        stream = self.stream = self.streams.new(self.settings)
        stream.writer = self
        self.is_attached = True
        if self.can_resume:
            keep_working()  # the client may leave and resume: the call goes on
            if self.settings.poll_after is not None:
                self.hang_up_at = min(
                    self.hang_up_at, trio.current_time() + self.settings.poll_after
                )
        headers = list(SSE_HEADERS)
        if self._is_hang_up_due():
            # The client reconnects at once: not on this connection, which
            # stays busy until the call is over.
            headers.append((b"connection", b"close"))
        try:
            await self.req.send_head(200, headers)
            if self.can_resume:
                await self.req.send_data(stream.log.priming(self.settings.retry_ms))
        except ClientGone:
            self._detach("the client left")
        return stream

    def _is_hang_up_due(self) -> bool:
        return self.can_resume and trio.current_time() >= self.hang_up_at

    async def send(self, message: Message, *, final: bool) -> None:
        self._check_abandoned()
        is_json = final and self.stream is None and not self.prefers_sse
        if is_json and not self._is_hang_up_due() and not self._lock.locked():
            # A lone answer: no stream was started, so nothing else writes
            # (and no lock round trip through the scheduler).
            await respond_json(self.req, message)
            return
        async with self._lock:
            is_json = final and self.stream is None and not self.prefers_sse
            if is_json and not self._is_hang_up_due():
                await respond_json(self.req, message)
                return
            stream = await self._start()
            event = stream.append(message, self.session)
            if final:
                stream.complete()
            if self._is_hang_up_due():
                await self._hang_up()
            await self._write(event)
            if final:
                await self._end()

    async def ping(self) -> None:
        self._check_abandoned()
        async with self._lock:
            await self._start()
            if self._is_hang_up_due():
                await self._hang_up()
            await self._write(encode_comment("ping"))

    def close(self) -> None:
        """The call is over, answered or not: a resume ends at the log's end."""
        if self.stream is not None:
            self.stream.complete()

    async def _write(self, data: bytes) -> None:
        if not self._is_writing():
            return
        try:
            await self.req.send_data(data)
        except ClientGone:
            self._detach("the client left")

    async def _end(self) -> None:
        if not self._is_writing():
            return
        try:
            await self.req.end()
        except ClientGone:
            pass
        self.is_attached = False

    async def _hang_up(self) -> None:
        if self._is_writing():
            logger.debug("session %s: hanging up SSE stream %s", self.session, self._key())
            await self._end()
            self.left_at = trio.current_time()

    def _is_writing(self) -> bool:
        if self.is_attached and self.stream is not None and self.stream.writer is not self:
            self.is_attached = False  # a resume took the stream over
        return self.is_attached

    def _check_abandoned(self) -> None:
        """Raise ClientGone when the client left and nobody resumed the
        stream within the resume window: the call ends (cancelled upstream)."""
        left = self.left_at
        if left is None or self.stream is None or self.stream.writer is not self:
            return
        window = self.settings.resume_window
        if trio.current_time() - left > window:
            raise ClientGone(f"nobody resumed the stream in {window:g}s")

    def _detach(self, why: str) -> None:
        if self.is_attached:
            self.is_attached = False
            self.left_at = trio.current_time()
            logger.debug("session %s: SSE stream %s: %s", self.session, self._key(), why)

    def _key(self) -> str:
        return self.stream.log.key if self.stream is not None else "-"


def resumable_outbox(
    req: ServerRequest,
    streams: SessionStreams,
    settings: SseSettings,
    session: str,
    protocol_version: str | None,
    prefers_sse: bool,
) -> ResumableOutbox:
    return ResumableOutbox(
        req,
        streams,
        settings,
        session,
        can_resume=has_resumable_streams(protocol_version),
        prefers_sse=prefers_sse,
    )


# ---------------------------------------------------------------- GET


def find_resumed(streams: SessionStreams, last_event_id: bytes) -> tuple[LiveStream, int]:
    """The stream a ``Last-Event-ID`` names, and the seq to resume after.

    Raises:
        ClientError: 400 for an id that names no stream of this session, or
            a point the log no longer reaches (its events fell out).
    """
    parsed = parse_event_id(last_event_id.decode("latin-1"))
    stream = streams.get(parsed[0]) if parsed is not None else None
    if parsed is None or stream is None:
        raise ClientError("unknown Last-Event-ID", detail="no such stream in this session")
    if stream.log.after(parsed[1]) is None:
        raise ClientError(
            "cannot resume from Last-Event-ID",
            detail=f"stream {stream.log.key}: events after {parsed[1]} are no longer kept",
        )
    return stream, parsed[1]


async def serve_log(
    req: ServerRequest,
    stream: LiveStream,
    after: int,
    waits: StreamWaits,
    messages: trio.MemoryReceiveChannel[Message] | None,
    session: str,
    *,
    priming: bytes = b"",
) -> None:
    """Answer ``req`` with ``stream``'s events after ``after``, following the
    log until it is complete (or, for a GET stream, until the client leaves
    or the gateway drains). ``messages`` feeds a GET stream's log: they are
    kept, then written."""
    me = object()
    stream.writer = me
    await req.send_head(200, list(SSE_HEADERS))
    if priming:
        await req.send_data(priming)
    cursor = after

    async def pump() -> None:
        nonlocal cursor
        while not waits.is_draining and stream.writer is me:
            batch = stream.log.after(cursor)
            if batch is None:  # fell out while the client was slow
                logger.info("session %s: SSE stream %s: the client fell behind", session, stream)
                return
            if batch:
                cursor += len(batch)
                await req.send_data(b"".join(batch))
                continue
            if stream.log.is_complete:
                return
            try:
                got = await waits.wait(
                    stream.wait_changed if messages is None else messages.receive
                )
            except trio.EndOfChannel:  # the session ended
                return
            if isinstance(got, dict):
                stream.append(got, session)
            elif got is None and not waits.is_draining:
                await req.send_data(encode_comment("ping"))

    try:
        await req.run_watched(pump)
    finally:
        if messages is not None:
            _keep_queued(stream, messages, session)
    await req.end()


def _keep_queued(
    stream: LiveStream, messages: trio.MemoryReceiveChannel[Message], session: str
) -> None:
    """A GET stream's client left: what was routed to it and not yet read
    goes into the log, for its resume."""
    while True:
        try:
            stream.append(messages.receive_nowait(), session)
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
