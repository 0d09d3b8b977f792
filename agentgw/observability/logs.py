"""Log output for the CLI: never blocks the event loop.

Records go into a bounded queue from the event loop and a writer thread
prints them to stderr, so a slow or full stderr pipe cannot stall requests.
When the queue is full, records are dropped and counted; the count is
reported once the queue has room again.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys

from agentgw.observability.access_log import escape

QUEUE_SIZE = 10000


class DroppingQueueHandler(logging.handlers.QueueHandler):
    def __init__(self, q: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(q)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            return
        if self.dropped:
            note = logging.LogRecord(
                "agentgw", logging.WARNING, "", 0, "dropped %d log lines", (self.dropped,), None
            )
            self.dropped = 0
            try:
                self.queue.put_nowait(note)
            except queue.Full:  # pragma: no cover
                pass

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # formatting happens on the writer thread


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


def setup_logging(fmt: str, level: str = "info") -> logging.handlers.QueueListener:
    """Install the queue handler on the root logger and start the writer
    thread; the caller stops the returned listener at exit."""
    q: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(LineFormatter(fmt))
    listener = logging.handlers.QueueListener(q, stream)
    root = logging.getLogger()
    root.handlers[:] = [DroppingQueueHandler(q)]
    root.setLevel(level.upper())
    listener.start()
    return listener
