"""Word from an upstream that ended a request's SSE stream before its
response (SEP-1699 polling: "reconnect with Last-Event-ID").

The Streamable HTTP transport resumes such a stream itself; it also tells
whoever listens in the calling task (a context variable, as the client watch
does), so that the gateway can hang up its own client's stream likewise
rather than hide the upstream's polling. A wait for the request's next
message (``interruptible``) ends at once on a hang-up, so that the gateway's
own stream is started and hung up without waiting for a keep-alive.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs
import trio

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


@attrs.define(eq=False)
class Wait:
    """A wait for a request's next message; ``is_interrupted`` once an
    upstream hung up during it."""

    scope: trio.CancelScope
    is_interrupted: bool = False


_WAIT: contextvars.ContextVar[Wait | None] = contextvars.ContextVar(
    "agentgw_hang_up_wait", default=None
)


@contextmanager
def interruptible(seconds: float) -> Iterator[Wait]:
    """``trio.move_on_after(seconds)`` that a hang-up also ends."""
    with trio.move_on_after(seconds) as scope:
        wait = Wait(scope)
        token = _WAIT.set(wait)
        try:
            yield wait
        finally:
            _WAIT.reset(token)


def hung_up() -> None:
    listener = _LISTENER.get()
    if listener is not None:
        listener()
    wait = _WAIT.get()
    if wait is not None:
        wait.is_interrupted = True
        wait.scope.cancel()
