"""The demo MCP server's protocol core: JSON-RPC messages in, effects out (no I/O).

How this works: one ``DemoSession`` is one MCP session. ``handle(message)``
takes one parsed JSON-RPC message from the client and says what the
transport must do:

- ``Answer``: send this response now (quick requests and every error);
- ``Start``: a request that is still running, with its first effect;
- ``Resume``: the client answered one of our requests; a call waits for it;
- ``Cancel``: the client cancelled a running call: stop it, send nothing;
- ``None``: nothing to do (other notifications, stray replies).

A running request is a ``Call`` around a generator (a "program") that yields
effects: ``Emit`` a notification or server-to-client request, ``Sleep``,
``Ask`` the client and wait for its reply, ``HangUp`` the response stream.
The transport performs each effect and calls ``Call.advance`` for the next
one, until ``Done`` carries the response. So timing, concurrency and
cancellation live in the transports, and this module is synchronous.

The catalogue (tools, prompts, resources) implements every fixture the MCP
conformance suite calls, plus a few tools for newcomers (``echo``, ``add``,
``slow``, ``increment``, ``list_roots``).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import Any

import attrs

from agentgw._version import __version__
from agentgw.demo.wire import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON,
    METHOD_NOT_FOUND,
    REQUEST_TIMEOUT,
    RESOURCE_NOT_FOUND,
    RequestId,
    classify,
    error_message,
    id_of,
    negotiate_version,
    notification,
    request,
    result_message,
)

logger = logging.getLogger(__name__)

SERVER_NAME = "agentgw-demo"
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
ProgressToken = str | int


# ---------------------------------------------------------------- effects


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
class Ask:
    """Send a server-to-client request and wait for the reply (at most
    ``timeout`` seconds; then the transport calls ``Call.time_out``)."""

    message: JSON
    timeout: float


@attrs.frozen
class HangUp:
    """End the call's response stream now; the call goes on and the client
    resumes with ``Last-Event-ID`` (SSE polling). Only HTTP acts on it."""


@attrs.frozen
class Done:
    """The call is over; ``message`` is its response."""

    message: JSON


Step = Emit | Sleep | Ask | HangUp
Effect = Step | Done
Program = Generator[Step, Any, JSON]


# ---------------------------------------------------------------- outcomes


@attrs.frozen
class Answer:
    message: JSON


@attrs.frozen
class Start:
    call: Call
    effect: Step


@attrs.frozen
class Resume:
    call: Call
    reply: JSON


@attrs.frozen
class Cancel:
    call: Call


Outcome = Answer | Start | Resume | Cancel | None


class RpcError(Exception):
    """A request fails with this JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


# ---------------------------------------------------------------- calls


@attrs.define(eq=False)
class Call:
    """One running request. The transport drives it with ``advance``."""

    request_id: RequestId
    method: str
    _session: DemoSession = attrs.field(repr=False)
    _program: Program = attrs.field(repr=False)
    pending_ask: RequestId | None = None
    is_finished: bool = False
    is_cancelled: bool = False
    _queued: Effect | None = attrs.field(default=None, repr=False)

    def advance(self, value: Any = None) -> Effect:
        """The next effect; ``value`` is the reply after an ``Ask``."""
        if self._queued is not None:
            effect, self._queued = self._queued, None
            return effect
        if self.is_finished:
            raise RuntimeError(f"{self!r} is finished")
        self.pending_ask = None
        try:
            step = self._program.send(value)
        except StopIteration as stop:
            return self._finish(result_message(self.request_id, stop.value))
        except RpcError as exc:
            return self._finish(error_message(self.request_id, exc.code, exc.message, exc.data))
        except Exception:
            logger.exception("%s %r failed", self.method, self.request_id)
            return self._finish(error_message(self.request_id, INTERNAL_ERROR, "internal error"))
        if isinstance(step, Ask):
            self.pending_ask = step.message["id"]
            self._session.asks[step.message["id"]] = self
        return step

    def time_out(self) -> Effect:
        """The client did not answer our request in time: tell it we gave up
        (``notifications/cancelled``), then resume the program with an error."""
        ask_id = self.pending_ask
        assert ask_id is not None, "time_out() without a pending Ask"
        self._session.asks.pop(ask_id, None)
        reply = error_message(ask_id, REQUEST_TIMEOUT, "the client did not answer in time")
        self._queued = self.advance(reply)
        return Emit(
            notification("notifications/cancelled", {"requestId": ask_id, "reason": "timed out"})
        )

    def close(self) -> None:
        """Stop the program (cancelled, or the transport is going away):
        ``is_cancelled`` unless it had finished. Idempotent."""
        if self.pending_ask is not None:
            self._session.asks.pop(self.pending_ask, None)
            self.pending_ask = None
        if not self.is_finished:
            self.is_finished = self.is_cancelled = True
            self._queued = None
            self._program.close()
        self._session.calls.pop(self.request_id, None)

    def _finish(self, message: JSON) -> Done:
        self.is_finished = True
        self._session.calls.pop(self.request_id, None)
        return Done(message)


# ---------------------------------------------------------------- session


@attrs.define(eq=False)
class DemoSession:
    """One MCP session's state and its request handlers.

    Args:
        ask_timeout: how long a tool waits for the client to answer a
            server-to-client request (sampling, elicitation, roots).
    """

    ask_timeout: float = 300.0
    protocol_version: str | None = None
    client_info: JSON = attrs.field(factory=dict)
    client_capabilities: JSON = attrs.field(factory=dict)
    log_level: str = "debug"
    subscriptions: set[str] = attrs.field(factory=set)
    counter: int = 0
    calls: dict[RequestId, Call] = attrs.field(factory=dict)
    asks: dict[RequestId, Call] = attrs.field(factory=dict)
    _next_ask: int = 1

    def __repr__(self) -> str:
        return (
            f"<DemoSession {self.protocol_version or 'uninitialized'} "
            f"calls={len(self.calls)} asks={len(self.asks)}>"
        )

    def is_at_least(self, version: str) -> bool:
        return self.protocol_version is not None and self.protocol_version >= version

    def has_capability(self, name: str) -> bool:
        return isinstance(self.client_capabilities.get(name), dict)

    def handle(self, message: object) -> Outcome:
        """Take one parsed message from the client; see the module docstring."""
        kind = classify(message)
        if kind == "invalid":
            return Answer(
                error_message(id_of(message), INVALID_REQUEST, "invalid JSON-RPC message")
            )
        assert isinstance(message, dict)
        if kind == "response":
            call = self.asks.pop(message["id"], None)
            if call is None:
                logger.debug("reply to unknown request %r", message["id"])
                return None
            return Resume(call, message)
        params = message.get("params", {})
        if not isinstance(params, dict):
            if kind == "notification":
                return None
            return Answer(error_message(message["id"], INVALID_PARAMS, "params must be an object"))
        if kind == "notification":
            return self._on_notification(message["method"], params)
        return self._on_request(message["id"], message["method"], params)

    # -- notifications

    def _on_notification(self, method: str, params: JSON) -> Outcome:
        if method == "notifications/cancelled":
            request_id = params.get("requestId")
            call = None
            if isinstance(request_id, str | int) and not isinstance(request_id, bool):
                call = self.calls.get(request_id)
            if call is not None and call.method != "initialize":
                call.close()
                return Cancel(call)
        return None

    # -- requests

    def _on_request(self, request_id: RequestId, method: str, params: JSON) -> Outcome:
        if request_id in self.calls:
            return Answer(error_message(request_id, INVALID_REQUEST, "request id already in use"))
        handler = _METHODS.get(method)
        if handler is None:
            return Answer(
                error_message(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")
            )
        if self.protocol_version is None and method not in ("initialize", "ping"):
            return Answer(error_message(request_id, INVALID_REQUEST, "initialize first"))
        try:
            program = handler(self, params)
        except RpcError as exc:
            return Answer(error_message(request_id, exc.code, exc.message, exc.data))
        call = Call(request_id, method, self, program)
        self.calls[request_id] = call
        effect = call.advance()
        if isinstance(effect, Done):
            return Answer(effect.message)
        return Start(call, effect)

    # -- helpers for programs

    def log(self, level: str, data: Any) -> Iterator[Emit]:
        """A ``notifications/message`` when ``level`` passes the client's filter."""
        if LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level):
            params = {"level": level, "logger": SERVER_NAME, "data": data}
            yield Emit(notification("notifications/message", params))

    def progress(
        self,
        token: ProgressToken | None,
        progress: float,
        total: float | None = None,
        message: str | None = None,
    ) -> Iterator[Emit]:
        """A ``notifications/progress`` when the request asked for progress."""
        if token is None:
            return
        params: JSON = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None and self.is_at_least("2025-03-26"):
            params["message"] = message
        yield Emit(notification("notifications/progress", params))

    def ask(self, method: str, params: JSON) -> Ask:
        ask_id = f"s{self._next_ask}"
        self._next_ask += 1
        return Ask(request(ask_id, method, params), self.ask_timeout)


# ---------------------------------------------------------------- fixtures


def _png_1x1_red() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then one red pixel
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence(samples: int = 80, rate: int = 8000) -> bytes:
    data = b"\x00\x00" * samples  # 16-bit mono
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    riff += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(riff)) + riff


PNG_BASE64 = base64.b64encode(_png_1x1_red()).decode()
WAV_BASE64 = base64.b64encode(_wav_silence()).decode()

README = """\
# agentgw demo server

A small MCP server shipped with agentgw, to try the gateway and to test it.

Tools: `echo`, `add`, `slow` (progress, cancellation), `increment` (resource
update notifications), `list_roots`, and every `test_*` tool of the MCP
conformance suite (text, image, audio, resources, logging, progress,
sampling, elicitation, errors).

Run it with `python -m agentgw.demo` (stdio) or
`python -m agentgw.demo --http 8765` (Streamable HTTP at /mcp).
"""

JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


def _schema(properties: JSON | None = None, required: tuple[str, ...] = ()) -> JSON:
    out: JSON = {"type": "object", "properties": properties or {}}
    if required:
        out["required"] = list(required)
    return out


def _text(text: str) -> JSON:
    return {"content": [{"type": "text", "text": text}]}


def _tool_error(text: str) -> JSON:
    return {"content": [{"type": "text", "text": text}], "isError": True}


def _now(result: JSON) -> Program:
    """A program that finishes at once."""
    yield from ()
    return result


# ---------------------------------------------------------------- tools

ToolHandler = Callable[[DemoSession, JSON, ProgressToken | None], Program]


@attrs.frozen
class Tool:
    name: str
    description: str
    input_schema: JSON
    handler: ToolHandler
    title: str | None = None
    output_schema: JSON | None = None
    annotations: JSON | None = None

    def describe(self, session: DemoSession) -> JSON:
        out: JSON = {"name": self.name, "description": self.description}
        out["inputSchema"] = self.input_schema
        if self.annotations is not None:
            out["annotations"] = self.annotations
        if session.is_at_least("2025-06-18"):
            if self.title is not None:
                out["title"] = self.title
            if self.output_schema is not None:
                out["outputSchema"] = self.output_schema
        return out


TOOLS: dict[str, Tool] = {}


def _tool(
    name: str,
    description: str,
    input_schema: JSON | None = None,
    **options: Any,
) -> Callable[[ToolHandler], ToolHandler]:
    def register(handler: ToolHandler) -> ToolHandler:
        schema = input_schema if input_schema is not None else _schema()
        TOOLS[name] = Tool(name, description, schema, handler, **options)
        return handler

    return register


_PRIMITIVES: dict[str, Callable[[object], bool]] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def check_arguments(schema: JSON, args: JSON) -> str | None:
    """The first problem with ``args`` against a flat object schema, or None."""
    properties: JSON = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in args:
            return f"missing argument: {name}"
    for name, value in args.items():
        spec = properties.get(name)
        if spec is None:
            if schema.get("additionalProperties") is False:
                return f"unknown argument: {name}"
            continue
        check = _PRIMITIVES.get(spec.get("type", ""))
        if check is not None and not check(value):
            return f"argument {name} must be of type {spec['type']}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in spec and value < spec["minimum"]:
                return f"argument {name} must be at least {spec['minimum']}"
            if "maximum" in spec and value > spec["maximum"]:
                return f"argument {name} must be at most {spec['maximum']}"
    return None


@_tool(
    "echo",
    "Returns the message it is given.",
    _schema({"message": {"type": "string", "description": "Text to echo back"}}, ("message",)),
    title="Echo",
    annotations={"readOnlyHint": True},
)
def _echo(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return _now(_text(args["message"]))


@_tool(
    "add",
    "Adds two numbers.",
    _schema({"a": {"type": "number"}, "b": {"type": "number"}}, ("a", "b")),
    title="Add",
    output_schema=_schema({"sum": {"type": "number"}}, ("sum",)),
    annotations={"readOnlyHint": True},
)
def _add(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    total = args["a"] + args["b"]
    result = _text(str(total))
    if s.is_at_least("2025-06-18"):
        result["structuredContent"] = {"sum": total}
    return _now(result)


@_tool(
    "slow",
    "Sleeps for `seconds`, sending a progress notification after each of `steps` "
    "steps when the request has a progress token. Stops when cancelled.",
    _schema(
        {
            "seconds": {"type": "number", "minimum": 0, "maximum": 3600, "default": 5},
            "steps": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 5},
        }
    ),
    title="Slow operation",
)
def _slow(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    seconds = float(args.get("seconds", 5))
    steps = int(args.get("steps", 5))
    for step in range(1, steps + 1):
        yield Sleep(seconds / steps)
        yield from s.progress(token, step, steps, f"step {step} of {steps}")
    return _text(f"slept {seconds:g} s in {steps} steps")


@_tool(
    "increment",
    "Adds one to the counter resource demo://counter; subscribers get "
    "notifications/resources/updated.",
    title="Increment the counter",
)
def _increment(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    s.counter += 1
    if COUNTER_URI in s.subscriptions:
        yield Emit(
            notification("notifications/resources/updated", {"uri": COUNTER_URI}),
            is_related=False,
        )
    return _text(f"counter is now {s.counter}")


@_tool("list_roots", "Asks the client for its roots (roots/list) and returns them.")
def _list_roots(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.has_capability("roots"):
        return _tool_error("the client does not support roots")
    reply = yield s.ask("roots/list", {})
    if "error" in reply:
        return _tool_error(f"roots/list failed: {reply['error'].get('message')}")
    return _text(json.dumps(reply["result"].get("roots", [])))


@_tool("test_simple_text", "Tests simple text content response")
def _simple_text(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return _now(_text("This is a simple text response for testing."))


@_tool("test_image_content", "Tests image content response")
def _image(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return _now({"content": [{"type": "image", "data": PNG_BASE64, "mimeType": "image/png"}]})


@_tool("test_audio_content", "Tests audio content response")
def _audio(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return _now({"content": [{"type": "audio", "data": WAV_BASE64, "mimeType": "audio/wav"}]})


@_tool("test_embedded_resource", "Tests embedded resource content response")
def _embedded(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    resource = {
        "uri": "test://embedded-resource",
        "mimeType": "text/plain",
        "text": "This is an embedded resource content.",
    }
    return _now({"content": [{"type": "resource", "resource": resource}]})


@_tool(
    "test_multiple_content_types",
    "Tests response with multiple content types (text, image, resource)",
)
def _mixed(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    resource = {
        "uri": "test://mixed-content-resource",
        "mimeType": "application/json",
        "text": json.dumps({"test": "data", "value": 123}),
    }
    content = [
        {"type": "text", "text": "Multiple content types test:"},
        {"type": "image", "data": PNG_BASE64, "mimeType": "image/png"},
        {"type": "resource", "resource": resource},
    ]
    return _now({"content": content})


@_tool("test_tool_with_logging", "Tests tool that emits log messages during execution")
def _with_logging(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    yield from s.log("info", "Tool execution started")
    yield Sleep(0.05)
    yield from s.log("info", "Tool processing data")
    yield Sleep(0.05)
    yield from s.log("info", "Tool execution completed")
    return _text("Tool with logging executed successfully")


@_tool("test_tool_with_progress", "Tests tool that reports progress notifications")
def _with_progress(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    for done in (0, 50, 100):
        if done:
            yield Sleep(0.05)
        yield from s.progress(token, done, 100, f"Completed step {done} of 100")
    return _text(f"progress reported to token {token!r}")


@_tool("test_error_handling", "Tests error response handling")
def _error(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return _now(_tool_error("This tool intentionally returns an error for testing"))


@_tool(
    "test_reconnection",
    "Tests SSE stream disconnection and client reconnection (SEP-1699): the server "
    "closes the response stream mid-call and sends the result after the client "
    "reconnects with Last-Event-ID.",
)
def _reconnection(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    yield HangUp()
    yield Sleep(0.1)
    return _text(
        "Reconnection test completed successfully. If you received this, the client "
        "properly reconnected after stream closure."
    )


def _sampled_text(result: JSON) -> str:
    content = result.get("content")
    items = content if isinstance(content, list) else [content]
    texts = [c["text"] for c in items if isinstance(c, dict) and c.get("type") == "text"]
    return "\n".join(texts) if texts else "(no text)"


@_tool(
    "test_sampling",
    "Tests server-initiated sampling (LLM completion request)",
    _schema(
        {"prompt": {"type": "string", "description": "The prompt to send to the LLM"}},
        ("prompt",),
    ),
)
def _sampling(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.has_capability("sampling"):
        return _tool_error("the client does not support sampling")
    message = {"role": "user", "content": {"type": "text", "text": args["prompt"]}}
    reply = yield s.ask("sampling/createMessage", {"messages": [message], "maxTokens": 100})
    if "error" in reply:
        return _tool_error(f"sampling failed: {reply['error'].get('message')}")
    return _text(f"LLM response: {_sampled_text(reply['result'])}")


def _elicit(s: DemoSession, message: str, schema: JSON, label: str) -> Program:
    if not s.has_capability("elicitation"):
        return _tool_error("the client does not support elicitation")
    reply = yield s.ask("elicitation/create", {"message": message, "requestedSchema": schema})
    if "error" in reply:
        return _tool_error(f"elicitation failed: {reply['error'].get('message')}")
    result = reply["result"]
    content = json.dumps(result.get("content") or {})
    return _text(f"{label}: action={result.get('action')}, content={content}")


@_tool(
    "test_elicitation",
    "Tests server-initiated elicitation (user input request)",
    _schema(
        {"message": {"type": "string", "description": "The message to show the user"}},
        ("message",),
    ),
)
def _elicitation(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    schema = _schema(
        {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        ("username", "email"),
    )
    return _elicit(s, args["message"], schema, "User response")


@_tool(
    "test_elicitation_sep1034_defaults",
    "Tests elicitation with default values for every primitive type (SEP-1034)",
)
def _elicitation_defaults(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    schema = _schema(
        {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": {"type": "boolean", "description": "Verified", "default": True},
        }
    )
    message = "Please review and update the form fields with defaults"
    return _elicit(s, message, schema, "Elicitation completed")


def _titled(prefix: str, titles: tuple[str, ...]) -> list[JSON]:
    return [{"const": f"{prefix}{i}", "title": t} for i, t in enumerate(titles, 1)]


@_tool(
    "test_elicitation_sep1330_enums",
    "Tests elicitation with the five enum schema variants (SEP-1330)",
)
def _elicitation_enums(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    options = ["option1", "option2", "option3"]
    schema = _schema(
        {
            "untitledSingle": {"type": "string", "description": "Pick one", "enum": options},
            "titledSingle": {
                "type": "string",
                "description": "Pick one (titled)",
                "oneOf": _titled("value", ("First Option", "Second Option", "Third Option")),
            },
            "legacyEnum": {
                "type": "string",
                "description": "Pick one (legacy titles)",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Pick some",
                "minItems": 1,
                "maxItems": 3,
                "items": {"type": "string", "enum": options},
            },
            "titledMulti": {
                "type": "array",
                "description": "Pick some (titled)",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "anyOf": _titled("value", ("First Choice", "Second Choice", "Third Choice"))
                },
            },
        }
    )
    message = "Please select options from the enum fields"
    return _elicit(s, message, schema, "Elicitation completed")


@_tool(
    "json_schema_2020_12_tool",
    "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
    JSON_SCHEMA_2020_12,
)
def _json_schema(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return _now(_text(f"JSON Schema 2020-12 tool called with: {json.dumps(args)}"))


# ---------------------------------------------------------------- resources

COUNTER_URI = "demo://counter"
TEMPLATE_URI = "test://template/{id}/data"
_TEMPLATE = re.compile(r"^test://template/([^/]+)/data$")


@attrs.frozen
class Resource:
    uri: str
    name: str
    title: str
    description: str
    mime_type: str
    read: Callable[[DemoSession], JSON]

    def describe(self, session: DemoSession) -> JSON:
        out: JSON = {"uri": self.uri, "name": self.name, "description": self.description}
        out["mimeType"] = self.mime_type
        if session.is_at_least("2025-06-18"):
            out["title"] = self.title
        return out


def _text_contents(uri: str, mime_type: str, text: str) -> JSON:
    return {"uri": uri, "mimeType": mime_type, "text": text}


RESOURCES = {
    r.uri: r
    for r in (
        Resource(
            "test://static-text",
            "static-text",
            "Static Text Resource",
            "A static text resource for testing",
            "text/plain",
            lambda s: _text_contents(
                "test://static-text",
                "text/plain",
                "This is the content of the static text resource.",
            ),
        ),
        Resource(
            "test://static-binary",
            "static-binary",
            "Static Binary Resource",
            "A static binary resource (a PNG image) for testing",
            "image/png",
            lambda s: {"uri": "test://static-binary", "mimeType": "image/png", "blob": PNG_BASE64},
        ),
        Resource(
            "test://watched-resource",
            "watched-resource",
            "Watched Resource",
            "A resource to subscribe to",
            "text/plain",
            lambda s: _text_contents(
                "test://watched-resource", "text/plain", "Watched resource content"
            ),
        ),
        Resource(
            "demo://readme",
            "readme",
            "About this server",
            "What the agentgw demo server offers",
            "text/markdown",
            lambda s: _text_contents("demo://readme", "text/markdown", README),
        ),
        Resource(
            COUNTER_URI,
            "counter",
            "Counter",
            "A number the increment tool raises; subscribe to hear about it",
            "text/plain",
            lambda s: _text_contents(COUNTER_URI, "text/plain", str(s.counter)),
        ),
    )
}


def _read_resource(s: DemoSession, uri: str) -> JSON:
    resource = RESOURCES.get(uri)
    if resource is not None:
        return resource.read(s)
    match = _TEMPLATE.match(uri)
    if match is not None:
        item_id = match.group(1)
        data = {"id": item_id, "templateTest": True, "data": f"Data for ID: {item_id}"}
        return _text_contents(uri, "application/json", json.dumps(data))
    raise RpcError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})


# ---------------------------------------------------------------- prompts


@attrs.frozen
class Prompt:
    name: str
    title: str
    description: str
    arguments: tuple[tuple[str, str, bool], ...]  # (name, description, required)
    render: Callable[[JSON], list[JSON]]
    completions: dict[str, tuple[str, ...]] = attrs.field(factory=dict)

    def describe(self, session: DemoSession) -> JSON:
        out: JSON = {"name": self.name, "description": self.description}
        if session.is_at_least("2025-06-18"):
            out["title"] = self.title
        if self.arguments:
            out["arguments"] = [
                {"name": n, "description": d, "required": r} for n, d, r in self.arguments
            ]
        return out


def _user(content: JSON) -> JSON:
    return {"role": "user", "content": content}


PROMPTS = {
    p.name: p
    for p in (
        Prompt(
            "test_simple_prompt",
            "Simple Test Prompt",
            "A simple prompt without arguments",
            (),
            lambda a: [_user({"type": "text", "text": "This is a simple prompt for testing."})],
        ),
        Prompt(
            "test_prompt_with_arguments",
            "Prompt With Arguments",
            "A prompt with required arguments",
            (("arg1", "First test argument", True), ("arg2", "Second test argument", True)),
            lambda a: [
                _user(
                    {
                        "type": "text",
                        "text": f"Prompt with arguments: arg1='{a['arg1']}', arg2='{a['arg2']}'",
                    }
                )
            ],
            {"arg1": ("paris", "park", "party"), "arg2": ("london", "lisbon", "lyon")},
        ),
        Prompt(
            "test_prompt_with_embedded_resource",
            "Prompt With Embedded Resource",
            "A prompt that includes an embedded resource",
            (("resourceUri", "URI of the resource to embed", True),),
            lambda a: [
                _user(
                    {
                        "type": "resource",
                        "resource": _text_contents(
                            a["resourceUri"], "text/plain", "Embedded resource content for testing."
                        ),
                    }
                ),
                _user({"type": "text", "text": "Please process the embedded resource above."}),
            ],
        ),
        Prompt(
            "test_prompt_with_image",
            "Prompt With Image",
            "A prompt that includes image content",
            (),
            lambda a: [
                _user({"type": "image", "data": PNG_BASE64, "mimeType": "image/png"}),
                _user({"type": "text", "text": "Please analyze the image above."}),
            ],
        ),
        Prompt(
            "greeting",
            "Greeting",
            "Asks the model to greet someone",
            (("name", "Who to greet", True), ("style", "formal or casual", False)),
            lambda a: [
                _user(
                    {
                        "type": "text",
                        "text": f"Please write a {a.get('style', 'friendly')} greeting "
                        f"for {a['name']}.",
                    }
                )
            ],
            {"name": ("Ada", "Alan", "Grace", "Linus"), "style": ("formal", "casual")},
        ),
    )
}

TEMPLATE_COMPLETIONS = {"id": ("1", "2", "3", "123")}


# ---------------------------------------------------------------- methods


def _initialize(s: DemoSession, params: JSON) -> Program:
    if s.protocol_version is not None:
        raise RpcError(INVALID_REQUEST, "the session is already initialized")
    requested = params.get("protocolVersion")
    if not isinstance(requested, str):
        raise RpcError(INVALID_PARAMS, "protocolVersion must be a string")
    capabilities = params.get("capabilities", {})
    s.protocol_version = negotiate_version(requested)
    s.client_capabilities = capabilities if isinstance(capabilities, dict) else {}
    info = params.get("clientInfo")
    s.client_info = info if isinstance(info, dict) else {}
    server_info: JSON = {"name": SERVER_NAME, "version": __version__}
    if s.is_at_least("2025-06-18"):
        server_info["title"] = "agentgw demo server"
    return _now(
        {
            "protocolVersion": s.protocol_version,
            "capabilities": {
                "tools": {"listChanged": False},
                "resources": {"subscribe": True, "listChanged": False},
                "prompts": {"listChanged": False},
                "logging": {},
                "completions": {},
            },
            "serverInfo": server_info,
            "instructions": "A demo server: try the echo, add and slow tools, "
            "the greeting prompt and the demo://readme resource.",
        }
    )


def _no_cursor(params: JSON) -> None:
    # Lists fit in one page: any cursor is one we did not issue.
    if "cursor" in params:
        raise RpcError(INVALID_PARAMS, "invalid cursor")


def _ping(s: DemoSession, params: JSON) -> Program:
    return _now({})


def _tools_list(s: DemoSession, params: JSON) -> Program:
    _no_cursor(params)
    return _now({"tools": [t.describe(s) for t in TOOLS.values()]})


def _tools_call(s: DemoSession, params: JSON) -> Program:
    name = params.get("name")
    tool = TOOLS.get(name) if isinstance(name, str) else None
    if tool is None:
        raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
    args = params.get("arguments", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RpcError(INVALID_PARAMS, "arguments must be an object")
    problem = check_arguments(tool.input_schema, args)
    if problem is not None:
        return _now(_tool_error(f"invalid arguments for {tool.name}: {problem}"))
    meta = params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    if not isinstance(token, str | int) or isinstance(token, bool):
        token = None
    return tool.handler(s, args, token)


def _resources_list(s: DemoSession, params: JSON) -> Program:
    _no_cursor(params)
    return _now({"resources": [r.describe(s) for r in RESOURCES.values()]})


def _templates_list(s: DemoSession, params: JSON) -> Program:
    _no_cursor(params)
    template: JSON = {
        "uriTemplate": TEMPLATE_URI,
        "name": "template",
        "description": "A resource template with parameter substitution",
        "mimeType": "application/json",
    }
    if s.is_at_least("2025-06-18"):
        template["title"] = "Resource Template"
    return _now({"resourceTemplates": [template]})


def _uri(params: JSON) -> str:
    uri = params.get("uri")
    if not isinstance(uri, str):
        raise RpcError(INVALID_PARAMS, "uri must be a string")
    return uri


def _resources_read(s: DemoSession, params: JSON) -> Program:
    return _now({"contents": [_read_resource(s, _uri(params))]})


def _subscribe(s: DemoSession, params: JSON) -> Program:
    s.subscriptions.add(_uri(params))
    return _now({})


def _unsubscribe(s: DemoSession, params: JSON) -> Program:
    s.subscriptions.discard(_uri(params))
    return _now({})


def _prompts_list(s: DemoSession, params: JSON) -> Program:
    _no_cursor(params)
    return _now({"prompts": [p.describe(s) for p in PROMPTS.values()]})


def _prompts_get(s: DemoSession, params: JSON) -> Program:
    name = params.get("name")
    prompt = PROMPTS.get(name) if isinstance(name, str) else None
    if prompt is None:
        raise RpcError(INVALID_PARAMS, f"Unknown prompt: {name}")
    args = params.get("arguments") or {}
    if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
        raise RpcError(INVALID_PARAMS, "arguments must map names to strings")
    for arg, _, required in prompt.arguments:
        if required and arg not in args:
            raise RpcError(INVALID_PARAMS, f"missing argument: {arg}")
    return _now({"description": prompt.description, "messages": prompt.render(args)})


def _complete(s: DemoSession, params: JSON) -> Program:
    ref = params.get("ref")
    argument = params.get("argument")
    if not isinstance(ref, dict) or not isinstance(argument, dict):
        raise RpcError(INVALID_PARAMS, "ref and argument are required")
    arg_name, value = argument.get("name"), argument.get("value", "")
    if not isinstance(arg_name, str) or not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "argument needs a name and a value")
    if ref.get("type") == "ref/prompt":
        prompt = PROMPTS.get(ref.get("name", ""))
        if prompt is None:
            raise RpcError(INVALID_PARAMS, f"Unknown prompt: {ref.get('name')}")
        candidates = prompt.completions.get(arg_name, ())
    elif ref.get("type") == "ref/resource":
        if ref.get("uri") != TEMPLATE_URI:
            raise RpcError(INVALID_PARAMS, f"Unknown resource template: {ref.get('uri')}")
        candidates = TEMPLATE_COMPLETIONS.get(arg_name, ())
    else:
        raise RpcError(INVALID_PARAMS, f"Unknown reference type: {ref.get('type')}")
    values = [c for c in candidates if c.lower().startswith(value.lower())]
    return _now({"completion": {"values": values[:100], "total": len(values), "hasMore": False}})


def _set_level(s: DemoSession, params: JSON) -> Program:
    level = params.get("level")
    if level not in LOG_LEVELS:
        raise RpcError(INVALID_PARAMS, f"level must be one of {', '.join(LOG_LEVELS)}")
    s.log_level = level
    return _now({})


_METHODS: dict[str, Callable[[DemoSession, JSON], Program]] = {
    "initialize": _initialize,
    "ping": _ping,
    "tools/list": _tools_list,
    "tools/call": _tools_call,
    "resources/list": _resources_list,
    "resources/templates/list": _templates_list,
    "resources/read": _resources_read,
    "resources/subscribe": _subscribe,
    "resources/unsubscribe": _unsubscribe,
    "prompts/list": _prompts_list,
    "prompts/get": _prompts_get,
    "completion/complete": _complete,
    "logging/setLevel": _set_level,
}
