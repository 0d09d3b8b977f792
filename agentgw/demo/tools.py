"""The demo server's tools, with no I/O.

Each tool is a program (see ``agentgw.demo.effects``). The catalogue holds
every tool the MCP conformance suite calls, for both the handshake-era and
the 2026-07-28 requirement sets, plus a few for newcomers (``echo``,
``add``, ``slow``, ``increment``, ``list_roots``). A tool that needs input
from the client yields ``Input``: the same code asks with server-to-client
requests in a session, and with an ``input_required`` result (MRTR) for a
2026-07-28 request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from agentgw.demo.content import (
    COUNTER_URI,
    PNG_BASE64,
    WAV_BASE64,
    finished,
    object_schema,
    text_result,
    tool_error,
)
from agentgw.demo.effects import (
    BecomeTask,
    Emit,
    HangUp,
    Input,
    InputRequest,
    Program,
    RpcError,
    Sleep,
)
from agentgw.demo.wire import INTERNAL_ERROR, JSON, notification

if TYPE_CHECKING:
    from agentgw.demo.server import DemoSession

ProgressToken = str | int

# SEP-1613 and SEP-2106: the full JSON Schema 2020-12 vocabulary survives tools/list.
JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

ToolHandler = Callable[["DemoSession", JSON, ProgressToken | None], Program]


@attrs.frozen
class Tool:
    name: str
    description: str
    input_schema: JSON
    handler: ToolHandler
    title: str | None = None
    output_schema: JSON | None = None
    annotations: JSON | None = None
    # The tasks extension: "forbidden", "optional" or "required"; a tool
    # that ``decides_task`` yields BecomeTask itself (after asking for input).
    task_support: str = "forbidden"
    decides_task: bool = False

    def describe(self, session: DemoSession) -> JSON:
        out: JSON = {"name": self.name, "description": self.description}
        out["inputSchema"] = self.input_schema
        if self.annotations is not None:
            out["annotations"] = self.annotations
        if self.task_support != "forbidden" and session.is_stateless:
            out["execution"] = {"taskSupport": self.task_support}
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
        schema = input_schema if input_schema is not None else object_schema()
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
    object_schema(
        {"message": {"type": "string", "description": "Text to echo back"}}, ("message",)
    ),
    title="Echo",
    annotations={"readOnlyHint": True},
)
def _echo(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return finished(text_result(args["message"]))


@_tool(
    "add",
    "Adds two numbers.",
    object_schema({"a": {"type": "number"}, "b": {"type": "number"}}, ("a", "b")),
    title="Add",
    output_schema=object_schema({"sum": {"type": "number"}}, ("sum",)),
    annotations={"readOnlyHint": True},
)
def _add(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    total = args["a"] + args["b"]
    result = text_result(str(total))
    if s.is_at_least("2025-06-18"):
        result["structuredContent"] = {"sum": total}
    return finished(result)


@_tool(
    "slow",
    "Sleeps for `seconds`, sending a progress notification after each of `steps` "
    "steps when the request has a progress token. Stops when cancelled.",
    object_schema(
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
    return text_result(f"slept {seconds:g} s in {steps} steps")


@_tool(
    "increment",
    "Adds one to the counter resource demo://counter; subscribers get "
    "notifications/resources/updated.",
    title="Increment the counter",
)
def _increment(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    value = s.bump_counter()
    if COUNTER_URI in s.subscriptions:
        yield Emit(
            notification("notifications/resources/updated", {"uri": COUNTER_URI}),
            is_related=False,
        )
    return text_result(f"counter is now {value}")


@_tool("list_roots", "Asks the client for its roots (roots/list) and returns them.")
def _list_roots(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("roots"):
        return tool_error("the client does not support roots")
    reply = yield from s.ask("roots", "roots/list", {})
    if "error" in reply:
        return tool_error(f"roots/list failed: {reply['error'].get('message')}")
    return text_result(json.dumps(reply["result"].get("roots", [])))


@_tool("test_simple_text", "Tests simple text content response")
def _simple_text(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return finished(text_result("This is a simple text response for testing."))


@_tool("test_image_content", "Tests image content response")
def _image(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return finished({"content": [{"type": "image", "data": PNG_BASE64, "mimeType": "image/png"}]})


@_tool("test_audio_content", "Tests audio content response")
def _audio(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return finished({"content": [{"type": "audio", "data": WAV_BASE64, "mimeType": "audio/wav"}]})


@_tool("test_embedded_resource", "Tests embedded resource content response")
def _embedded(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    resource = {
        "uri": "test://embedded-resource",
        "mimeType": "text/plain",
        "text": "This is an embedded resource content.",
    }
    return finished({"content": [{"type": "resource", "resource": resource}]})


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
    return finished({"content": content})


@_tool("test_tool_with_logging", "Tests tool that emits log messages during execution")
def _with_logging(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    yield from s.log("info", "Tool execution started")
    yield Sleep(0.05)
    yield from s.log("info", "Tool processing data")
    yield Sleep(0.05)
    yield from s.log("info", "Tool execution completed")
    return text_result("Tool with logging executed successfully")


@_tool("test_tool_with_progress", "Tests tool that reports progress notifications")
def _with_progress(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    for done in (0, 50, 100):
        if done:
            yield Sleep(0.05)
        yield from s.progress(token, done, 100, f"Completed step {done} of 100")
    return text_result(f"progress reported to token {token!r}")


@_tool("test_error_handling", "Tests error response handling")
def _error(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return finished(tool_error("This tool intentionally returns an error for testing"))


@_tool(
    "test_reconnection",
    "Tests SSE stream disconnection and client reconnection (SEP-1699): the server "
    "closes the response stream mid-call and sends the result after the client "
    "reconnects with Last-Event-ID.",
)
def _reconnection(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    yield HangUp()
    yield Sleep(0.1)
    return text_result(
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
    object_schema(
        {"prompt": {"type": "string", "description": "The prompt to send to the LLM"}},
        ("prompt",),
    ),
)
def _sampling(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("sampling"):
        return tool_error("the client does not support sampling")
    message = {"role": "user", "content": {"type": "text", "text": args["prompt"]}}
    params = {"messages": [message], "maxTokens": 100}
    reply = yield from s.ask("sample", "sampling/createMessage", params)
    if "error" in reply:
        return tool_error(f"sampling failed: {reply['error'].get('message')}")
    return text_result(f"LLM response: {_sampled_text(reply['result'])}")


def _elicit(s: DemoSession, message: str, schema: JSON, label: str) -> Program:
    if not s.check_capability("elicitation"):
        return tool_error("the client does not support elicitation")
    params = {"message": message, "requestedSchema": schema}
    reply = yield from s.ask("elicit", "elicitation/create", params)
    if "error" in reply:
        return tool_error(f"elicitation failed: {reply['error'].get('message')}")
    result = reply["result"]
    content = json.dumps(result.get("content") or {})
    return text_result(f"{label}: action={result.get('action')}, content={content}")


@_tool(
    "test_elicitation",
    "Tests server-initiated elicitation (user input request)",
    object_schema(
        {"message": {"type": "string", "description": "The message to show the user"}},
        ("message",),
    ),
)
def _elicitation(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    schema = object_schema(
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
    schema = object_schema(
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
    schema = object_schema(
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
def _jsonobject_schema(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return finished(text_result(f"JSON Schema 2020-12 tool called with: {json.dumps(args)}"))


# ---------------------------------------------------------------- 2026-07-28 fixtures
# The tools the 2026-07-28 scenarios call. In a handshake-era session they
# ask with server-to-client requests instead, one at a time.


def _elicit_request(
    key: str, message: str, properties: JSON, required: tuple[str, ...]
) -> InputRequest:
    schema = object_schema(properties, required)
    return InputRequest(key, "elicitation/create", {"message": message, "requestedSchema": schema})


def _sample_request(key: str, text: str, max_tokens: int) -> InputRequest:
    message = {"role": "user", "content": {"type": "text", "text": text}}
    return InputRequest(
        key, "sampling/createMessage", {"messages": [message], "maxTokens": max_tokens}
    )


def _answer(reply: JSON, field: str) -> str:
    """A field of an accepted elicitation, else a placeholder."""
    result = reply.get("result")
    content = result.get("content") if isinstance(result, dict) else None
    value = content.get(field) if isinstance(content, dict) else None
    return str(value) if value is not None else "(none)"


@_tool("test_input_required_result_elicitation", "MRTR: asks the user's name by elicitation")
def _mrtr_elicitation(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("elicitation"):
        return tool_error("the client does not support elicitation")
    request = _elicit_request(
        "user_name", "What is your name?", {"name": {"type": "string"}}, ("name",)
    )
    replies = yield Input((request,))
    return text_result(f"Hello, {_answer(replies['user_name'], 'name')}!")


@_tool("test_input_required_result_sampling", "MRTR: asks the client's model a question")
def _mrtr_sampling(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("sampling"):
        return tool_error("the client does not support sampling")
    replies = yield Input(
        (_sample_request("sample_request", "What is the capital of France?", 100),)
    )
    reply = replies["sample_request"]
    if "error" in reply:
        return tool_error(f"sampling failed: {reply['error'].get('message')}")
    return text_result(f"Sampling result: {_sampled_text(reply['result'])}")


@_tool("test_input_required_result_list_roots", "MRTR: asks the client for its roots")
def _mrtr_roots(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("roots"):
        return tool_error("the client does not support roots")
    replies = yield Input((InputRequest("roots_request", "roots/list", {}),))
    result = replies["roots_request"].get("result", {})
    roots = result.get("roots") if isinstance(result, dict) else None
    return text_result(f"Found {len(roots) if isinstance(roots, list) else 0} root(s)")


@_tool(
    "test_input_required_result_request_state",
    "MRTR: asks for a confirmation; the retry must bring back the requestState",
)
def _mrtr_request_state(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("elicitation"):
        return tool_error("the client does not support elicitation")
    request = _elicit_request("confirm", "Please confirm", {"ok": {"type": "boolean"}}, ("ok",))
    replies = yield Input((request,))
    confirmed = _answer(replies["confirm"], "ok")
    if s.has_verified_state:
        return text_result(f"state-ok: requestState validated (ok={confirmed})")
    return text_result(f"no requestState came back (ok={confirmed})")


@_tool(
    "test_input_required_result_multiple_inputs",
    "MRTR: asks for a name, a model's greeting and the roots at once",
)
def _mrtr_multiple(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    for capability in ("elicitation", "sampling", "roots"):
        if not s.check_capability(capability):
            return tool_error(f"the client does not support {capability}")
    replies = yield Input(
        (
            _elicit_request(
                "user_name", "What is your name?", {"name": {"type": "string"}}, ("name",)
            ),
            _sample_request("greeting", "Generate a greeting", 50),
            InputRequest("client_roots", "roots/list", {}),
        )
    )
    name = _answer(replies["user_name"], "name")
    greeting = replies["greeting"].get("result")
    said = _sampled_text(greeting) if isinstance(greeting, dict) else "(none)"
    return text_result(f"All inputs received: name={name}, greeting={said}")


@_tool("test_input_required_result_multi_round", "MRTR: asks a name, then a colour, in two rounds")
def _mrtr_multi_round(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("elicitation"):
        return tool_error("the client does not support elicitation")
    first = yield Input(
        (
            _elicit_request(
                "step1", "Step 1: What is your name?", {"name": {"type": "string"}}, ("name",)
            ),
        )
    )
    second = yield Input(
        (
            _elicit_request(
                "step2",
                "Step 2: What is your favorite color?",
                {"color": {"type": "string"}},
                ("color",),
            ),
        )
    )
    name, color = _answer(first["step1"], "name"), _answer(second["step2"], "color")
    return text_result(f"Multi-round complete for {name} who likes {color}")


@_tool(
    "test_input_required_result_tampered_state",
    "MRTR: asks for a confirmation; a requestState that was altered is refused",
)
def _mrtr_tampered(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("elicitation"):
        return tool_error("the client does not support elicitation")
    request = _elicit_request("confirm", "Please confirm", {"ok": {"type": "boolean"}}, ("ok",))
    replies = yield Input((request,))
    return text_result(f"integrity-ok: state verified (ok={_answer(replies['confirm'], 'ok')})")


@_tool(
    "test_input_required_result_capabilities",
    "MRTR: asks only for the inputs the client declared it can give",
)
def _mrtr_capabilities(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    requests = []
    if s.has_capability("elicitation"):
        requests.append(
            _elicit_request(
                "elicit_input", "Elicitation input", {"value": {"type": "string"}}, ("value",)
            )
        )
    if s.has_capability("sampling"):
        requests.append(_sample_request("sample_input", "Sample request", 50))
    if not requests:
        return text_result("No supported capabilities declared")
    replies = yield Input(tuple(requests))
    return text_result(f"capabilities-ok: received {','.join(sorted(replies))}")


@_tool(
    "test_missing_capability",
    "Asks the client's model something; needs the sampling capability "
    "(2026-07-28: refused with -32021 without it)",
)
def _missing_capability(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("sampling"):
        return tool_error("the client does not support sampling")
    replies = yield Input((_sample_request("sample", "Say something", 20),))
    reply = replies["sample"]
    if "error" in reply:
        return tool_error(f"sampling failed: {reply['error'].get('message')}")
    return text_result(f"Sampled: {_sampled_text(reply['result'])}")


@_tool(
    "test_streaming_elicitation",
    "Reports progress, then asks the user for a value: the response stream carries "
    "notifications and never a server-to-client request (2026-07-28)",
)
def _streaming_elicitation(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("elicitation"):
        return tool_error("the client does not support elicitation")
    yield from s.progress(token, 50, 100, "asking the user")
    yield from s.log("info", "asking the user for a value")
    request = _elicit_request("value", "Enter a value", {"value": {"type": "string"}}, ("value",))
    replies = yield Input((request,))
    return text_result(f"Streaming complete: {_answer(replies['value'], 'value')}")


@_tool(
    "test_logging_tool",
    "Sends one info log message: only when the request asked for logs (2026-07-28: "
    "_meta io.modelcontextprotocol/logLevel)",
)
def _logging_tool(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    yield from s.log("info", "Diagnostic trace logging activated")
    return text_result("Logging evaluated")


@_tool(
    "test_trigger_tool_change",
    "Tells subscribers that the tool list changed (notifications/tools/list_changed)",
)
def _trigger_tools(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    yield from s.list_changed("tools")
    return text_result("Mutation triggered")


@_tool(
    "test_trigger_prompt_change",
    "Tells subscribers that the prompt list changed (notifications/prompts/list_changed)",
)
def _trigger_prompts(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    yield from s.list_changed("prompts")
    return text_result("Mutation triggered")


@_tool(
    "greet",
    "Greets someone (a synchronous tool of the tasks extension's scenarios)",
    object_schema({"name": {"type": "string", "description": "Who to greet"}}, ("name",)),
)
def _greet(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return finished(text_result(f"Hello, {args['name']}!"))


@_tool(
    "slow_compute",
    "Sleeps `seconds` (at most 60), then answers with the time it took; a task "
    "for clients of the tasks extension",
    object_schema(
        {
            "seconds": {"type": "number", "minimum": 0, "maximum": 60, "default": 1},
            "label": {"type": "string"},
        }
    ),
    task_support="optional",
)
def _slow_compute(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    seconds = float(args.get("seconds", 1))
    if seconds:
        yield Sleep(seconds)
    return text_result(f"computed in {seconds:g} s")


@_tool(
    "failing_job",
    "Runs only as a task (the tasks extension); ends with a tool error",
    task_support="required",
)
def _failing_job(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    yield Sleep(0.2)
    return tool_error("the job failed, as it always does")


@_tool(
    "protocol_error_job",
    "Fails with a JSON-RPC error (a task ends failed)",
    task_support="optional",
)
def _protocol_error_job(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    yield Sleep(0.2)
    raise RpcError(INTERNAL_ERROR, "the job broke")


@_tool(
    "confirm_delete",
    "Asks the user to confirm before pretending to delete `filename`",
    object_schema({"filename": {"type": "string"}}, ("filename",)),
    task_support="optional",
)
def _confirm_delete(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("elicitation"):
        return tool_error("the client does not support elicitation")
    message = f"Delete {args['filename']}?"
    request = _elicit_request("confirm", message, {"confirm": {"type": "boolean"}}, ("confirm",))
    replies = yield Input((request,))
    confirmed = _answer(replies["confirm"], "confirm") == "True"
    return text_result(f"{'deleted' if confirmed else 'kept'} {args['filename']}")


@_tool(
    "multi_input",
    "Asks for a name and a confirmation at once",
    task_support="optional",
)
def _multi_input(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("elicitation"):
        return tool_error("the client does not support elicitation")
    replies = yield Input(
        (
            _elicit_request("name", "Your name?", {"name": {"type": "string"}}, ("name",)),
            _elicit_request("confirm", "Go on?", {"confirm": {"type": "boolean"}}, ("confirm",)),
        )
    )
    return text_result(f"name={_answer(replies['name'], 'name')}")


@_tool(
    "test_tool_with_task",
    "Asks the user's name (input_required), then answers from a task",
    task_support="required",
    decides_task=True,
)
def _tool_with_task(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    if not s.check_capability("elicitation"):
        return tool_error("the client does not support elicitation")
    request = _elicit_request(
        "user_name", "What is your name?", {"name": {"type": "string"}}, ("name",)
    )
    replies = yield Input((request,))
    yield BecomeTask()
    yield Sleep(0.1)
    return text_result(f"Hello, {_answer(replies['user_name'], 'name')}, from a task")


@_tool(
    "test_custom_header",
    "Says which region it was called for; the region travels in the "
    "Mcp-Param-Region header too (SEP-2243)",
    object_schema(
        {"region": {"type": "string", "description": "A region", "x-mcp-header": "Region"}},
        ("region",),
    ),
)
def _custom_header(s: DemoSession, args: JSON, token: ProgressToken | None) -> Program:
    return finished(text_result(f"region is {args['region']}"))
