"""What a running request (a "program") yields to the demo server's core, and
the error it raises; no I/O.

A program is a generator: it yields ``Emit``, ``Sleep``, ``Input``,
``HangUp`` or ``BecomeTask`` and returns its result. ``Ask`` is what the
core hands the transport for one server-to-client request of an ``Input``
(handshake-era sessions only), ``Gather`` what a task waits for, and
``Done`` carries the response.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import attrs

from agentgw.demo.wire import JSON


@attrs.frozen
class Emit:
    """Send a message: a notification or a request nobody waits for.
    ``is_related=False`` marks one that is not about the running call (it
    goes to the session's own stream, not the call's)."""

    message: JSON
    is_related: bool = True


@attrs.frozen
class Sleep:
    seconds: float


@attrs.frozen
class InputRequest:
    """One thing to ask the client: ``sampling/createMessage``,
    ``elicitation/create`` or ``roots/list``, under a key the program picks."""

    key: str
    method: str
    params: JSON


@attrs.frozen
class Input:
    """Ask the client for one or more inputs; the program gets back a dict
    from each key to the client's reply, a JSON-RPC response (``result`` or
    ``error``). In a handshake-era session the core asks with server-to-client
    requests, one at a time; for a 2026-07-28 request it answers the request
    with an ``input_required`` result, unless the retry already carries the
    answers (MRTR)."""

    requests: tuple[InputRequest, ...]


@attrs.frozen
class BecomeTask:
    """From here on, run as a task (when the client declared the tasks
    extension; otherwise nothing happens): the request is answered with a
    ``CreateTaskResult`` and the program goes on in the background."""


@attrs.frozen
class Gather:
    """A task waits for these inputs (``tasks/update`` brings them); the
    program gets back a dict from each key to its reply."""

    requests: tuple[InputRequest, ...]


@attrs.frozen
class Ask:
    """Send a server-to-client request (and ``more``, the other requests of
    the same ``Input``, all at once) and wait for a reply (at most
    ``timeout`` seconds; then the transport calls ``Call.time_out``)."""

    message: JSON
    timeout: float
    more: tuple[JSON, ...] = ()


@attrs.frozen
class Wait:
    """Wait for the next reply to requests an ``Ask`` sent already."""

    timeout: float


@attrs.frozen
class HangUp:
    """End the call's response stream now; the call goes on and the client
    resumes with ``Last-Event-ID`` (SSE polling). Only HTTP acts on it."""


@attrs.frozen
class Done:
    """The call is over; ``message`` is its response."""

    message: JSON


Yielded = Emit | Sleep | Input | HangUp | BecomeTask
Step = Emit | Sleep | Ask | Wait | HangUp | Gather
Effect = Step | Done
Program = Generator[Yielded, Any, JSON]


class RpcError(Exception):
    """A request fails with this JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
