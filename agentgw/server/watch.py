"""Noticing a client that leaves while its request's work runs, cheaply.

How this works: a request whose body is read runs its work (an upstream
call) inside ``ClientWatch.scope``. Reading the client's socket meanwhile,
to see it close, takes a task; most calls are over long before that task
would matter, so it is started lazily. Every wait of the work that may be
long (an upstream's answer, a message from a session) asks ``watch_deadline()``
when it should stop waiting blind, waits at most until then, and on that
deadline calls ``start_watching()`` and waits on. The watcher task runs in
the client connection's nursery; when it sees the client close, it cancels
the work's scope. A request that is answered within ``GRACE`` never starts
one. The watch travels in a context variable, so the layers in between (the
relay, the transports, the pool) need not pass it along; tasks spawned for
the request (a fan-out) inherit it; so does a task the request starts that
outlives it (an upstream's GET stream), which then never starts a watcher:
the request is over and its connection's nursery may be closed.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

T = TypeVar("T")

GRACE = 0.02  # seconds of work before the client is watched

_CURRENT: contextvars.ContextVar[ClientWatch | None] = contextvars.ContextVar(
    "agentgw_client_watch", default=None
)


@attrs.define(eq=False)
class ClientWatch:
    """The watch over one request's client.

    Args:
        watch: returns when the client has closed its connection (never
            otherwise); run in the watcher task.
        nursery: where the watcher task runs (the connection's).
    """

    watch: Callable[[], Awaitable[None]]
    nursery: trio.Nursery
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    deadline: float = attrs.field(factory=lambda: trio.current_time() + GRACE)
    is_started: bool = False
    is_gone: bool = False
    is_over: bool = False  # the request's work has ended
    # False once the work must outlive its client (a resumable stream): a
    # client that leaves is only noted.
    cancels: bool = True
    # Made when the watcher starts: most requests never need them.
    _stop: trio.CancelScope | None = None
    _stopped: trio.Event | None = None

    def start(self) -> None:
        """Start watching the client (once)."""
        if not self.is_started and not self.is_over:
            self.is_started = True
            self._stop, self._stopped = trio.CancelScope(), trio.Event()
            self.nursery.start_soon(self._run, self._stop, self._stopped)

    async def _run(self, stop: trio.CancelScope, stopped: trio.Event) -> None:
        try:
            with stop:
                await self.watch()
                self.is_gone = True
                if self.cancels:
                    self.scope.cancel()
        finally:
            stopped.set()

    async def stop(self) -> None:
        """Stop watching; returns once the watcher no longer reads."""
        if self._stop is not None and self._stopped is not None:
            self._stop.cancel()
            with trio.CancelScope(shield=True):
                await self._stopped.wait()


async def run_watched(
    watch: Callable[[], Awaitable[None]],
    nursery: trio.Nursery,
    work: Callable[[], Awaitable[None]],
) -> bool:
    """Run ``work``, cancelled if the client goes away meanwhile.

    Returns:
        True if the client went away (``work`` was cancelled or ended).
    """
    state = ClientWatch(watch, nursery)
    token = _CURRENT.set(state)
    try:
        with state.scope:
            await work()
    finally:
        _CURRENT.reset(token)
        state.is_over = True
        await state.stop()
    return state.is_gone


def watch_deadline() -> float:
    """When a wait that may be long should start watching the client
    (``math.inf``: no client to watch, or it is watched already)."""
    state = _CURRENT.get()
    if state is None or state.is_started or state.is_over:
        return math.inf
    return state.deadline


def keep_working() -> None:
    """Let the current request's work go on if its client leaves (it feeds a
    stream the client can resume); a departure is only noted."""
    state = _CURRENT.get()
    if state is not None:
        state.cancels = False


def start_watching() -> None:
    """Watch the current request's client from now on (if there is one)."""
    state = _CURRENT.get()
    if state is not None:
        state.start()


async def wait_watched(wait: Callable[[], Awaitable[T]]) -> T:
    """``await wait()``, watching the client once it takes longer than the
    grace period. ``wait`` must be safe to cancel and call again (a memory
    channel's ``receive``, an event's ``wait``)."""
    at = watch_deadline()
    if at != math.inf:
        with trio.move_on_at(at):
            return await wait()
        start_watching()
    return await wait()
