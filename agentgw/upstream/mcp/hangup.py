"""Word from an upstream that ended a request's SSE stream before its
response (SEP-1699 polling: "reconnect with Last-Event-ID").

The Streamable HTTP transport resumes such a stream itself; it also tells
whoever listens in the calling task (a context variable, as the client watch
does), so that the gateway can hang up its own client's stream likewise
rather than hide the upstream's polling.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_LISTENER: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "agentgw_hang_up_listener", default=None
)


@contextmanager
def listening_for_hang_ups(listener: Callable[[], None]) -> Iterator[None]:
    """Call ``listener`` (synchronously) when an upstream of this task hangs
    up a request's stream mid-call."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def hung_up() -> None:
    listener = _LISTENER.get()
    if listener is not None:
        listener()
