"""Resumable SSE streams (Streamable HTTP, 2025-11-25): the events of one
stream, numbered and kept for a client that reconnects with ``Last-Event-ID``.

How this works: an event id is ``<stream>:<seq>``, the stream's key (unique
in its session) and the event's number on that stream (0 is the priming
event, which carries no message; messages are 1, 2, ...). So a GET naming
any event id says which stream to resume and from where. An ``EventLog``
keeps a stream's newest events as the bytes that went out, at most
``max_events`` of them and ``max_bytes`` (the newest is always kept); older
ones fall out, and a resume from before them is refused rather than given
a stream with a gap.
"""

from __future__ import annotations

import functools
from collections import deque

import attrs

from agentgw.wire.sse import encode_event

RESUMABLE_SINCE = "2025-11-25"
MAX_SEQ_DIGITS = 18


def has_resumable_streams(protocol_version: str | None) -> bool:
    """Whether a session of ``protocol_version`` gets priming events (a
    client of an older revision may not expect an event without data)."""
    return protocol_version is not None and protocol_version >= RESUMABLE_SINCE


def event_id(key: str, seq: int) -> str:
    return f"{key}:{seq}"


def parse_event_id(text: str) -> tuple[str, int] | None:
    """``(stream key, seq)`` of an event id, or None if it is not one of ours."""
    key, colon, seq = text.rpartition(":")
    if not colon or not key or not (seq.isascii() and seq.isdigit()):
        return None
    if len(seq) > MAX_SEQ_DIGITS:
        return None
    return key, int(seq)


@functools.lru_cache(maxsize=256)  # clients send the same few values
def prefers_event_stream(accept: bytes | None) -> bool:
    """Whether an Accept header ranks ``text/event-stream`` above
    ``application/json`` (by q-value, then by order)."""
    ranks: dict[bytes, tuple[float, int]] = {}
    for position, item in enumerate((accept or b"").lower().split(b",")):
        media, *params = (part.strip() for part in item.split(b";"))
        if media not in (b"application/json", b"text/event-stream"):
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition(b"=")
            if name.strip() == b"q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        ranks.setdefault(media, (quality, -position))
    sse = ranks.get(b"text/event-stream")
    return sse is not None and sse[0] > 0 and sse > ranks.get(b"application/json", (0.0, 0))


@attrs.define(eq=False)
class EventLog:
    """One stream's events, kept for replay."""

    key: str
    max_events: int = 1000
    max_bytes: int = 1 << 20
    last_seq: int = 0
    # The stream's last message is in: the call was answered, or it ended.
    is_complete: bool = False
    dropped: int = 0
    _events: deque[tuple[int, bytes]] = attrs.field(factory=deque)
    _bytes: int = 0

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else "open"
        return (
            f"<EventLog {self.key} {state} seq={self.last_seq} kept={len(self._events)} "
            f"bytes={self._bytes} dropped={self.dropped}>"
        )

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    def priming(self, retry_ms: int | None) -> bytes:
        """The priming event: the id to resume from, no message."""
        return encode_event("", id=event_id(self.key, self.last_seq), retry=retry_ms)

    def append(self, data: str) -> tuple[bytes, int]:
        """Number and keep one message (its JSON text).

        Returns:
            The event as it goes out, and how many older events fell out of
            the log to make room.
        """
        self.last_seq += 1
        event = encode_event(data, id=event_id(self.key, self.last_seq))
        self._events.append((self.last_seq, event))
        self._bytes += len(event)
        fell = 0
        while len(self._events) > 1 and (
            len(self._events) > self.max_events or self._bytes > self.max_bytes
        ):
            _, old = self._events.popleft()
            self._bytes -= len(old)
            fell += 1
        self.dropped += fell
        return event, fell

    def after(self, seq: int) -> list[bytes] | None:
        """The events after ``seq``; None when that cannot be told without a
        gap (some fell out) or ``seq`` was never sent."""
        if seq > self.last_seq:
            return None
        first_kept = self._events[0][0] if self._events else self.last_seq + 1
        if seq + 1 < first_kept:
            return None
        return [event for n, event in self._events if n > seq]

    def complete(self) -> None:
        self.is_complete = True
