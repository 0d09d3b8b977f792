"""Access-log lines in agentgateway's style, text or JSON (no I/O).

A record is filled while a request runs; ``format_text``/``format_json`` turn
it into one line. Every value is escaped (control characters become ``\\xNN``)
and truncated, so a client cannot forge or flood a log line. Tokens never get
here: nothing copies header values into a record.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Literal

import attrs

logger = logging.getLogger("agentgw.access")

MAX_VALUE = 256
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\"\\]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def escape(value: str, limit: int = MAX_VALUE) -> str:
    """Escape control characters, quotes and backslashes; cut at ``limit``."""
    cut = len(value) > limit
    if cut:
        value = value[:limit]
    value = _UNSAFE.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), value)
    return value + "..." if cut else value


@attrs.define
class AccessRecord:
    """What one request did. Later layers add fields to ``extra``."""

    gateway: str
    src_addr: str
    listener: str | None = None
    route: str | None = None
    method: str | None = None
    host: str | None = None
    path: str | None = None
    version: str | None = None
    status: int | None = None
    duration_ms: float = 0.0
    error: str | None = None
    extra: dict[str, str] = attrs.field(factory=dict)
    # Set by the relay: whether a target lists the tool, prompt or resource
    # named in ``extra`` (metrics label it ``unknown`` otherwise).
    mcp_name_known: bool | None = None

    def fields(self) -> list[tuple[str, str | int | None]]:
        out: list[tuple[str, str | int | None]] = [
            ("gateway", self.gateway),
            ("listener", self.listener),
            ("route", self.route),
            ("src.addr", self.src_addr),
            ("http.method", self.method),
            ("http.host", self.host),
            ("http.path", self.path),
            ("http.version", self.version),
            ("http.status", self.status),
        ]
        out.extend(self.extra.items())
        out.append(("duration", f"{self.duration_ms:.0f}ms"))
        if self.error is not None:
            out.append(("error", self.error))
        return out


_PLAIN = re.compile(rf"[^\x00-\x20\x7f-\x9f\"\\=]{{1,{MAX_VALUE}}}")


def _text_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    if _PLAIN.fullmatch(value):  # most values: nothing to escape or quote
        return value
    return f'"{escape(value)}"'


def format_text(record: AccessRecord) -> str:
    parts = ["request"]
    for key, value in record.fields():
        if value is not None:
            parts.append(f"{key}={_text_value(value)}")
    return " ".join(parts)


def format_json(record: AccessRecord) -> str:
    obj: dict[str, str | int] = {"msg": "request"}
    for key, value in record.fields():
        if value is not None:
            obj[key] = value if isinstance(value, int) else escape(value)
    return json.dumps(obj, separators=(",", ":"))


def emit(record: AccessRecord, fmt: Literal["text", "json"]) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info(format_json(record) if fmt == "json" else format_text(record))
