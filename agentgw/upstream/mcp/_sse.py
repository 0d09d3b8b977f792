"""A private incremental SSE decoder (WHATWG event stream parsing).

Stands in until ``agentgw.wire.sse`` lands; same shape:
``SSEDecoder().feed(bytes) -> list[SSEEvent]``. No I/O.

An event is emitted for every block that set any field, even with no data,
so that a priming event (an ``id`` with empty data, as 2025-11-25 servers
send) still moves the caller's last event id.
"""

from __future__ import annotations

import re

import attrs

_LINE_END = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"


@attrs.frozen
class SSEEvent:
    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Raises ValueError from ``feed`` when one event grows past
    ``max_event_size`` bytes."""

    def __init__(self, max_event_size: int = 16 * 1024 * 1024) -> None:
        self.max_event_size = max_event_size
        self._buf = bytearray()
        self._started = False
        self._skip_lf = False
        self._size = 0
        self._seen = False
        self._event: str | None = None
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buf = self._buf
        buf += data
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(bytes(buf)):
                return events
            self._started = True
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
        pos = 0
        if self._skip_lf and buf:
            self._skip_lf = False
            if buf[:1] == b"\n":
                pos = 1
        while (match := _LINE_END.search(buf, pos)) is not None:
            end = match.start()
            line = bytes(buf[pos:end])
            if buf[end] == 0x0D:  # CR, maybe the first half of CRLF
                if end + 1 < len(buf):
                    pos = end + 2 if buf[end + 1] == 0x0A else end + 1
                else:
                    pos = end + 1
                    self._skip_lf = True
            else:
                pos = end + 1
            self._line(line, events)
        del buf[:pos]
        if self._size + len(buf) > self.max_event_size:
            raise ValueError(f"SSE event larger than {self.max_event_size} bytes")
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._seen:
                events.append(SSEEvent(self._event, "\n".join(self._data), self._id, self._retry))
            self._seen = False
            self._event = None
            self._data = []
            self._id = None
            self._retry = None
            self._size = 0
            return
        if line.startswith(b":"):
            return
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        text = value.decode("utf-8", "replace")
        self._size += len(line)
        if self._size > self.max_event_size:
            raise ValueError(f"SSE event larger than {self.max_event_size} bytes")
        if name == b"data":
            self._data.append(text)
        elif name == b"event":
            self._event = text
        elif name == b"id":
            if "\0" in text:
                return
            self._id = text
        elif name == b"retry":
            if not text.isascii() or not text.isdigit():
                return
            self._retry = int(text)
        else:
            return
        self._seen = True
