"""Log output for the CLI: never blocks the event loop.

Records go into a bounded buffer from the event loop, and a writer thread
prints them to stderr in batches, so a slow or full stderr pipe cannot
stall requests. The writer wakes at most every ``BATCH_INTERVAL`` seconds:
waking it for every line would hand the GIL back and forth a few times per
request. When the buffer is full, records are dropped and counted; the
count is reported once there is room again.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import time
from typing import TextIO

from agentgw.observability.access_log import escape

QUEUE_SIZE = 10000
BATCH_INTERVAL = 0.02


class BatchingHandler(logging.Handler):
    """Buffers records for a writer thread; ``close`` writes what is left."""

    def __init__(self, stream: TextIO, max_records: int = QUEUE_SIZE) -> None:
        super().__init__()
        self.stream = stream
        self.max_records = max_records
        self.dropped = 0
        self._records: collections.deque[logging.LogRecord] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._write_loop, name="agentgw-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._records) >= self.max_records:
            self.dropped += 1
            return
        self._records.append(record)
        if not self._wake.is_set():
            self._wake.set()

    def close(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout=5)
        super().close()

    def _write_loop(self) -> None:
        while not self._stopping:
            self._wake.wait()
            time.sleep(BATCH_INTERVAL)
            self._wake.clear()
            self._write_batch()
        self._write_batch()

    def _write_batch(self) -> None:
        lines = []
        records = self._records
        while records:
            record = records.popleft()
            try:
                lines.append(self.format(record))
            except Exception:  # a bad record costs its line, never the writer
                lines.append(f"error agentgw.logs: cannot format a record of {record.name}")
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            lines.append(f"warning agentgw: dropped {dropped} log lines")
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed: nothing left to tell
            pass


class LineFormatter(logging.Formatter):
    """Access lines pass through as they are; other records become one
    escaped line, text or JSON."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "agentgw.access":
            return message
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.json:
            obj = {"level": record.levelname.lower(), "target": record.name, "msg": message}
            return json.dumps(obj, separators=(",", ":"))
        return f"{record.levelname.lower()} {record.name}: {escape(message, 4096)}"


def setup_logging(fmt: str, level: str = "info") -> BatchingHandler:
    """Install the batching handler on the root logger (it starts the writer
    thread); the caller closes the returned handler at exit."""
    # What a record would look up and never print: the caller's frame (a
    # stack walk per line), thread and process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingHandler(sys.stderr)
    handler.setFormatter(LineFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler


# ---------------------------------------------------------------- the level at run time

LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO}
LEVELS["debug"] = logging.DEBUG
_NAMES = {v: k for k, v in LEVELS.items()}


def current_level() -> str:
    """agentgw's log level (``error``, ``warn``, ``info`` or ``debug``)."""
    level = logging.getLogger("agentgw").getEffectiveLevel()
    return _NAMES.get(level, logging.getLevelName(level).lower())


def set_level(level: str | None) -> None:
    """Set agentgw's log level; None goes back to the configured one.

    Raises:
        ValueError: not one of ``LEVELS``.
    """
    if level is None:
        logging.getLogger("agentgw").setLevel(logging.NOTSET)
        return
    if level not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}, got {level!r}")
    logging.getLogger("agentgw").setLevel(LEVELS[level])
