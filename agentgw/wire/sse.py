"""Server-Sent Events with no I/O: an incremental decoder and the encoders.

How this works: ``SSEDecoder.feed`` appends bytes to a buffer and cuts every
complete line out of it, following the WHATWG event-stream rules. A line ends
at CRLF, LF or CR; a CR that ends a chunk ends its line at once and a LF that
starts the next chunk is then skipped, so any split of the stream gives the
same events. Lines are decoded as UTF-8 (with replacement) one at a time,
which is safe because CR and LF never occur inside a multi-byte sequence.
The bytes of every line since the last blank line (comments too), plus the
partial line, count against ``max_event_bytes``; that bounds the buffer as
well as the event. A partial line is scanned for a line end only once, so a
large event arriving in small chunks costs linear time.
"""

from __future__ import annotations

import re

import attrs

from agentgw.errors import UpstreamError

DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024

_EOL = re.compile(rb"\r\n|\r|\n")
_TEXT_EOL = re.compile(r"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_DIGITS = re.compile(r"[0-9]+")


class SSEError(UpstreamError):
    """The event stream is malformed or an event is too large (502).

    Attributes:
        events: events completed in the same ``feed`` call before the error.
    """

    def __init__(self, reason: str, events: list[SSEEvent] | None = None) -> None:
        super().__init__(reason)
        self.events = list(events or ())


@attrs.frozen
class SSEEvent:
    """One dispatched event.

    ``id`` and ``retry`` are the values given in this event's own lines, or
    None; the id that carries over between events is
    ``SSEDecoder.last_event_id``.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


@attrs.define(eq=False)
class SSEDecoder:
    """Incremental ``text/event-stream`` parser: bytes in, events out."""

    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    _buf: bytearray = attrs.field(init=False, factory=bytearray)
    _at_start: bool = attrs.field(init=False, default=True)
    _skip_lf: bool = attrs.field(init=False, default=False)
    _failed: bool = attrs.field(init=False, default=False)
    _event_bytes: int = attrs.field(init=False, default=0)
    _scanned: int = attrs.field(init=False, default=0)
    _data: list[str] = attrs.field(init=False, factory=list)
    _type: str = attrs.field(init=False, default="")
    _id: str | None = attrs.field(init=False, default=None)
    _retry: int | None = attrs.field(init=False, default=None)
    last_event_id: str = attrs.field(init=False, default="")
    """The id to send as ``Last-Event-ID`` when reconnecting."""
    retry: int | None = attrs.field(init=False, default=None)
    """The last reconnection time (ms) the server asked for."""

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse more of the stream.

        Returns:
            The events completed by ``data``, in order.

        Raises:
            SSEError: an event (or an unterminated line) exceeds
                ``max_event_bytes``. The decoder is then unusable.
        """
        if self._failed:
            raise SSEError("event stream decoder already failed")
        buf = self._buf
        buf += data
        pos = 0
        if self._at_start:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return []
            self._at_start = False
            if buf.startswith(_BOM):
                pos = len(_BOM)
        if self._skip_lf and pos < len(buf):
            self._skip_lf = False
            if buf[pos] == 0x0A:
                pos += 1
        events: list[SSEEvent] = []
        limit = self.max_event_bytes
        # The partial line kept from the last call holds no line end.
        search = max(pos, self._scanned)
        while (match := _EOL.search(buf, search)) is not None:
            start, end = match.span()
            if start == pos:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            else:
                self._event_bytes += start - pos
                if self._event_bytes > limit:
                    self._fail(events)
                self._line(buf[pos:start].decode("utf-8", "replace"))
            pos = search = end
            if end == len(buf) and end - start == 1 and buf[start] == 0x0D:
                self._skip_lf = True
        del buf[:pos]
        self._scanned = len(buf)
        if self._event_bytes + len(buf) > limit:
            self._fail(events)
        return events

    def _fail(self, events: list[SSEEvent]) -> None:
        self._failed = True
        self._buf.clear()
        self._data.clear()
        raise SSEError(f"event larger than {self.max_event_bytes} bytes", events)

    def _line(self, line: str) -> None:
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry" and _DIGITS.fullmatch(value):
            self._retry = self.retry = int(value)

    def _dispatch(self) -> SSEEvent | None:
        event = None
        if self._data:
            event = SSEEvent(
                data="\n".join(self._data),
                event=self._type or "message",
                id=self._id,
                retry=self._retry,
            )
        self._data = []
        self._type = ""
        self._id = None
        self._retry = None
        self._event_bytes = 0
        return event


def _check_field(name: str, value: str, forbidden: str = "\r\n") -> None:
    if any(c in value for c in forbidden):
        raise ValueError(f"SSE {name} must not contain {forbidden!r}")


def encode_event(
    data: str,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """One event as bytes, ending with its blank line.

    Each line of ``data`` becomes one ``data:`` line; CR, LF and CRLF all
    split lines (the format cannot carry a bare CR).

    Raises:
        ValueError: ``event`` or ``id`` contains CR or LF, ``id`` contains
            NUL, or ``retry`` is negative.
    """
    parts: list[str] = []
    if event is not None:
        _check_field("event", event)
        parts.append(f"event: {event}\n")
    if id is not None:
        _check_field("id", id, "\r\n\0")  # a decoder ignores an id with NUL
        parts.append(f"id: {id}\n")
    if retry is not None:
        if retry < 0:
            raise ValueError("SSE retry must not be negative")
        parts.append(f"retry: {retry}\n")
    for line in _TEXT_EOL.split(data):
        parts.append(f"data: {line}\n" if line else "data:\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "ping") -> bytes:
    """A comment block (``: ping\\n\\n``), the keep-alive of event streams."""
    lines = _TEXT_EOL.split(text)
    return "".join(f": {line}\n" for line in lines).encode("utf-8") + b"\n"
