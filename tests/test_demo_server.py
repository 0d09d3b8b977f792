"""The demo server: its protocol core (synchronously, no I/O), its wire
helpers, its stdio transport over memory streams and its HTTP bookkeeping."""

from __future__ import annotations

import ast
import base64
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from agentgw.demo import server as core
from agentgw.demo.http import MAX_KEPT_STREAMS, DemoHttpApp, EventStream
from agentgw.demo.modern import (
    Hub,
    StateSealer,
    SubscriptionFilter,
    param_header_problem,
    parse_envelope,
)
from agentgw.demo.runner import CallRunner
from agentgw.demo.server import (
    PROMPTS,
    RESOURCES,
    TOOLS,
    Answer,
    Ask,
    Cancel,
    DemoSession,
    Done,
    Effect,
    Emit,
    Gather,
    HangUp,
    Listen,
    Outcome,
    Resume,
    Sleep,
    Start,
    StartTask,
    Wait,
    handle_stateless,
)
from agentgw.demo.stdio import MAX_LINE, serve_stdio
from agentgw.demo.tasks import TaskStore
from agentgw.demo.wire import (
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    LineSplitter,
    accepts,
    classify,
    encode_sse,
    is_allowed_origin,
    parse_event_id,
    prefers_sse,
)

JSON = dict[str, Any]
CLIENT_INFO = {"name": "test", "version": "1"}
ALL_CAPABILITIES = {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}}

# ---------------------------------------------------------------- a driver


@attrs.define
class Ran:
    """What one request produced: every message sent (the response last),
    the sleeps, the hang-ups and the messages about no request."""

    messages: list[JSON] = attrs.field(factory=list)
    sleeps: list[float] = attrs.field(factory=list)
    hangups: int = 0
    unrelated: list[JSON] = attrs.field(factory=list)
    asked_together: list[int] = attrs.field(factory=list)  # requests per Ask

    @property
    def response(self) -> JSON:
        return self.messages[-1]

    @property
    def result(self) -> JSON:
        assert "result" in self.response, self.response
        result: JSON = self.response["result"]
        return result

    @property
    def error(self) -> JSON:
        assert "error" in self.response, self.response
        error: JSON = self.response["error"]
        return error

    @property
    def text(self) -> str:
        text: str = self.result["content"][0]["text"]
        return text

    def sent(self, method: str) -> list[JSON]:
        return [m for m in self.messages if m.get("method") == method]


Answerer = Callable[[JSON], JSON]


def drive(session: DemoSession, outcome: Outcome, answer: Answerer | None = None) -> Ran:
    """Perform a request's effects at once, as a transport would. ``answer``
    gets each server-to-client request and returns the client's reply."""
    ran = Ran()
    waiting: list[JSON] = []  # requests sent, not answered yet
    if isinstance(outcome, Answer):
        ran.messages.append(outcome.message)
        return ran
    assert isinstance(outcome, Start), outcome
    call = outcome.call
    effect: Effect = outcome.effect
    while not isinstance(effect, Done):
        if isinstance(effect, Emit):
            (ran.messages if effect.is_related else ran.unrelated).append(effect.message)
            effect = call.advance()
        elif isinstance(effect, Sleep):
            ran.sleeps.append(effect.seconds)
            effect = call.advance()
        elif isinstance(effect, HangUp):
            ran.hangups += 1
            effect = call.advance()
        else:
            if isinstance(effect, Ask):
                asked = [effect.message, *effect.more]
                ran.messages += asked
                ran.asked_together.append(len(asked))
                waiting += asked
            else:
                assert isinstance(effect, Wait) and waiting, effect
            assert answer is not None, f"unexpected request {waiting[0]}"
            resumed = session.handle(answer(waiting.pop(0)))
            assert isinstance(resumed, Resume) and resumed.call is call
            effect = call.advance(resumed.reply)
    ran.messages.append(effect.message)
    assert not session.calls and not session.asks
    return ran


def rpc(
    session: DemoSession,
    method: str,
    params: JSON | None = None,
    *,
    request_id: int | str = 7,
    answer: Answerer | None = None,
) -> Ran:
    message: JSON = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    ran = drive(session, session.handle(message), answer)
    assert ran.response["id"] == request_id
    return ran


def call_tool(session: DemoSession, name: str, args: JSON | None = None, **kw: Any) -> Ran:
    params: JSON = {"name": name, "arguments": args or {}}
    if "token" in kw:
        params["_meta"] = {"progressToken": kw.pop("token")}
    return rpc(session, "tools/call", params, **kw)


def open_session(
    version: str = LATEST_VERSION, capabilities: JSON | None = None, **options: Any
) -> DemoSession:
    session = DemoSession(**options)
    params = {"protocolVersion": version, "capabilities": capabilities or {}}
    rpc(session, "initialize", {**params, "clientInfo": CLIENT_INFO}, request_id=0)
    assert session.handle({"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    return session


def reply(result: JSON) -> Answerer:
    return lambda request: {"jsonrpc": "2.0", "id": request["id"], "result": result}


# ---------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_initialize_answers_with_the_clients_version(version: str) -> None:
    session = DemoSession()
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": CLIENT_INFO}
    result = rpc(session, "initialize", params).result
    assert result["protocolVersion"] == version == session.protocol_version
    assert result["serverInfo"]["name"] == "agentgw-demo"
    caps = result["capabilities"]
    assert caps["resources"]["subscribe"] is True
    assert {"tools", "prompts", "logging", "completions"} <= caps.keys()


def test_initialize_with_an_unknown_version_answers_the_latest() -> None:
    session = DemoSession()
    params = {"protocolVersion": "1999-01-01", "capabilities": {}, "clientInfo": CLIENT_INFO}
    assert rpc(session, "initialize", params).result["protocolVersion"] == LATEST_VERSION


def test_initialize_twice_or_without_a_version_is_an_error() -> None:
    assert rpc(DemoSession(), "initialize", {"capabilities": {}}).error["code"] == -32602
    session = open_session()
    again = {"protocolVersion": LATEST_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
    assert rpc(session, "initialize", again).error["code"] == -32600


def test_only_ping_works_before_initialize() -> None:
    session = DemoSession()
    assert rpc(session, "ping").result == {}
    assert rpc(session, "tools/list").error["code"] == -32600


def test_server_discover_in_a_session_is_not_found_so_new_clients_fall_back() -> None:
    for session in (DemoSession(), open_session()):
        error = rpc(session, "server/discover", {"_meta": {}}).error
        assert error["code"] == -32601


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ([1, 2], -32600),
        ({"id": 1, "method": "ping"}, -32600),
        ({"jsonrpc": "2.0", "id": None, "method": "ping"}, -32600),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, -32600),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, -32600),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "no/such/method"}, -32601),
    ],
)
def test_invalid_messages_get_errors(message: Any, code: int) -> None:
    outcome = open_session().handle(message)
    assert isinstance(outcome, Answer)
    assert outcome.message["error"]["code"] == code


def test_stray_replies_and_unknown_notifications_are_ignored() -> None:
    session = open_session()
    assert session.handle({"jsonrpc": "2.0", "id": "s99", "result": {}}) is None
    assert session.handle({"jsonrpc": "2.0", "method": "notifications/whatever"}) is None
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
    assert session.handle(cancel) is None


def test_a_request_id_in_use_is_refused() -> None:
    session = open_session()
    first = session.handle(_tool_request(1, "slow", {"seconds": 1}))
    assert isinstance(first, Start)
    second = session.handle(_tool_request(1, "echo", {"message": "x"}))
    assert isinstance(second, Answer) and second.message["error"]["code"] == -32600


# ---------------------------------------------------------------- tools


def _tool_request(request_id: int, name: str, args: JSON, token: str | None = None) -> JSON:
    params: JSON = {"name": name, "arguments": args}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


FIXTURE_TOOLS = {
    "test_simple_text",
    "test_image_content",
    "test_audio_content",
    "test_embedded_resource",
    "test_multiple_content_types",
    "test_tool_with_logging",
    "test_tool_with_progress",
    "test_error_handling",
    "test_sampling",
    "test_elicitation",
    "test_elicitation_sep1034_defaults",
    "test_elicitation_sep1330_enums",
    "test_reconnection",
    "json_schema_2020_12_tool",
}
# The tools the 2026-07-28 requirement set calls.
FIXTURE_TOOLS_2026 = {
    "test_input_required_result_elicitation",
    "test_input_required_result_sampling",
    "test_input_required_result_list_roots",
    "test_input_required_result_request_state",
    "test_input_required_result_multiple_inputs",
    "test_input_required_result_multi_round",
    "test_input_required_result_tampered_state",
    "test_input_required_result_capabilities",
    "test_missing_capability",
    "test_streaming_elicitation",
    "test_logging_tool",
    "test_trigger_tool_change",
    "test_trigger_prompt_change",
    "greet",
    "slow_compute",
    "failing_job",
    "protocol_error_job",
    "confirm_delete",
    "multi_input",
    "test_tool_with_task",
    "test_custom_header",
}


def test_tools_list_has_the_fixtures_and_the_demo_tools() -> None:
    tools = rpc(open_session(), "tools/list").result["tools"]
    names = {t["name"] for t in tools}
    demo = {"echo", "add", "slow", "increment", "list_roots"}
    assert FIXTURE_TOOLS | FIXTURE_TOOLS_2026 | demo == names
    assert list(TOOLS) == [t["name"] for t in tools]
    for tool in tools:
        assert tool["description"]
        assert tool["inputSchema"]["type"] == "object"
    schema = next(t for t in tools if t["name"] == "json_schema_2020_12_tool")["inputSchema"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "address" in schema["$defs"]
    assert schema["additionalProperties"] is False


def test_structured_output_is_only_for_2025_06_18_and_later() -> None:
    old, new = open_session("2025-03-26"), open_session("2025-06-18")
    add_old = next(t for t in rpc(old, "tools/list").result["tools"] if t["name"] == "add")
    add_new = next(t for t in rpc(new, "tools/list").result["tools"] if t["name"] == "add")
    assert "outputSchema" not in add_old and "title" not in add_old
    assert add_new["outputSchema"]["required"] == ["sum"]
    assert "structuredContent" not in call_tool(old, "add", {"a": 1, "b": 2}).result
    assert call_tool(new, "add", {"a": 1, "b": 2}).result["structuredContent"] == {"sum": 3}


def test_a_cursor_we_never_issued_is_invalid() -> None:
    assert rpc(open_session(), "tools/list", {"cursor": "x"}).error["code"] == -32602


def test_echo_and_add() -> None:
    session = open_session()
    assert call_tool(session, "echo", {"message": "hello"}).text == "hello"
    ran = call_tool(session, "add", {"a": 2, "b": 0.5})
    assert ran.text == "2.5"
    assert ran.result["structuredContent"] == {"sum": 2.5}


@pytest.mark.parametrize(
    ("name", "args", "problem"),
    [
        ("echo", {}, "missing argument: message"),
        ("echo", {"message": 5}, "must be of type string"),
        ("add", {"a": True, "b": 1}, "must be of type number"),
        ("slow", {"steps": 0}, "at least 1"),
        ("slow", {"seconds": 1e9}, "at most 3600"),
        ("json_schema_2020_12_tool", {"nope": 1}, "unknown argument: nope"),
    ],
)
def test_bad_arguments_are_tool_errors(name: str, args: JSON, problem: str) -> None:
    result = call_tool(open_session(), name, args).result
    assert result["isError"] is True
    assert problem in result["content"][0]["text"]


def test_unknown_tool_and_bad_arguments_object_are_protocol_errors() -> None:
    session = open_session()
    assert call_tool(session, "nope").error["code"] == -32602
    params = {"name": "echo", "arguments": [1]}
    assert rpc(session, "tools/call", params).error["code"] == -32602


def test_content_fixtures() -> None:
    session = open_session()
    assert call_tool(session, "test_simple_text").text == (
        "This is a simple text response for testing."
    )
    image = call_tool(session, "test_image_content").result["content"][0]
    assert image["type"] == "image" and image["mimeType"] == "image/png"
    assert base64.b64decode(image["data"]).startswith(b"\x89PNG\r\n\x1a\n")
    audio = call_tool(session, "test_audio_content").result["content"][0]
    assert audio["type"] == "audio" and audio["mimeType"] == "audio/wav"
    wav = base64.b64decode(audio["data"])
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    embedded = call_tool(session, "test_embedded_resource").result["content"][0]
    assert embedded["resource"] == {
        "uri": "test://embedded-resource",
        "mimeType": "text/plain",
        "text": "This is an embedded resource content.",
    }
    mixed = call_tool(session, "test_multiple_content_types").result["content"]
    assert [c["type"] for c in mixed] == ["text", "image", "resource"]
    assert json.loads(mixed[2]["resource"]["text"]) == {"test": "data", "value": 123}
    error = call_tool(session, "test_error_handling").result
    assert error["isError"] is True
    assert error["content"][0]["text"] == "This tool intentionally returns an error for testing"
    args = {"name": "x", "address": {"city": "y"}}
    assert '"city": "y"' in call_tool(session, "json_schema_2020_12_tool", args).text


def test_logging_tool_sends_three_info_messages_with_pauses() -> None:
    session = open_session()
    ran = call_tool(session, "test_tool_with_logging")
    logs = ran.sent("notifications/message")
    assert [m["params"]["data"] for m in logs] == [
        "Tool execution started",
        "Tool processing data",
        "Tool execution completed",
    ]
    assert {m["params"]["level"] for m in logs} == {"info"}
    assert ran.sleeps == [0.05, 0.05]
    assert ran.messages[-1]["result"]["content"]


def test_set_level_filters_log_messages() -> None:
    session = open_session()
    assert rpc(session, "logging/setLevel", {"level": "warning"}).result == {}
    assert call_tool(session, "test_tool_with_logging").sent("notifications/message") == []
    assert rpc(session, "logging/setLevel", {"level": "loud"}).error["code"] == -32602


def test_progress_tool_reports_0_50_100_with_the_token() -> None:
    session = open_session()
    ran = call_tool(session, "test_tool_with_progress", token="tok")
    progress = [m["params"] for m in ran.sent("notifications/progress")]
    assert [(p["progressToken"], p["progress"], p["total"]) for p in progress] == [
        ("tok", 0, 100),
        ("tok", 50, 100),
        ("tok", 100, 100),
    ]
    assert ran.sleeps == [0.05, 0.05]
    assert call_tool(session, "test_tool_with_progress").sent("notifications/progress") == []


def test_slow_reports_each_step() -> None:
    session = open_session()
    ran = call_tool(session, "slow", {"seconds": 2, "steps": 4}, token=3)
    assert ran.sleeps == [0.5] * 4
    progress = [m["params"] for m in ran.sent("notifications/progress")]
    assert [(p["progressToken"], p["progress"], p["total"]) for p in progress] == [
        (3, 1, 4),
        (3, 2, 4),
        (3, 3, 4),
        (3, 4, 4),
    ]
    assert ran.text == "slept 2 s in 4 steps"


def test_progress_messages_are_left_out_for_2024_11_05() -> None:
    session = open_session("2024-11-05")
    ran = call_tool(session, "slow", {"seconds": 1, "steps": 1}, token="t")
    assert "message" not in ran.sent("notifications/progress")[0]["params"]


def test_cancelling_a_running_call_stops_it_without_a_response() -> None:
    session = open_session()
    started = session.handle(_tool_request(9, "slow", {"seconds": 10, "steps": 10}, "t"))
    assert isinstance(started, Start) and isinstance(started.effect, Sleep)
    call = started.call
    assert isinstance(call.advance(), Emit)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}}
    outcome = session.handle(cancel)
    assert outcome == Cancel(call)
    assert call.is_finished and call.is_cancelled and not session.calls
    assert session.handle(cancel) is None
    call.close()  # the transport's cleanup is harmless after a cancel


def test_reconnection_tool_hangs_up_then_answers() -> None:
    ran = call_tool(open_session(), "test_reconnection")
    assert ran.hangups == 1
    assert "Reconnection test completed successfully" in ran.text


def test_sampling_asks_the_client() -> None:
    session = open_session(capabilities=ALL_CAPABILITIES)
    answer = reply({"role": "assistant", "content": {"type": "text", "text": "hi!"}, "model": "m"})
    ran = call_tool(session, "test_sampling", {"prompt": "Say hi"}, answer=answer)
    (ask,) = ran.sent("sampling/createMessage")
    assert ask["params"] == {
        "messages": [{"role": "user", "content": {"type": "text", "text": "Say hi"}}],
        "maxTokens": 100,
        # the input's name, for a gateway that makes it an MRTR round
        "_meta": {"io.agentgw/inputKey": "sample"},
    }
    assert ran.text == "LLM response: hi!"


def test_sampling_error_and_missing_capability_are_tool_errors() -> None:
    session = open_session(capabilities=ALL_CAPABILITIES)

    def refuse(request: JSON) -> JSON:
        return {"jsonrpc": "2.0", "id": request["id"], "error": {"code": -1, "message": "no"}}

    ran = call_tool(session, "test_sampling", {"prompt": "x"}, answer=refuse)
    assert ran.result["isError"] is True and "no" in ran.text
    assert call_tool(open_session(), "test_sampling", {"prompt": "x"}).result["isError"] is True


def test_elicitation_tools_send_their_schemas() -> None:
    session = open_session(capabilities=ALL_CAPABILITIES)
    answer = reply({"action": "accept", "content": {"username": "u", "email": "e@x"}})
    ran = call_tool(session, "test_elicitation", {"message": "Who?"}, answer=answer)
    (ask,) = ran.sent("elicitation/create")
    assert ask["params"]["message"] == "Who?"
    assert ask["params"]["requestedSchema"]["required"] == ["username", "email"]
    assert ran.text == 'User response: action=accept, content={"username": "u", "email": "e@x"}'

    ran = call_tool(
        session, "test_elicitation_sep1034_defaults", answer=reply({"action": "decline"})
    )
    props = ran.sent("elicitation/create")[0]["params"]["requestedSchema"]["properties"]
    assert {k: v["default"] for k, v in props.items()} == {
        "name": "John Doe",
        "age": 30,
        "score": 95.5,
        "status": "active",
        "verified": True,
    }
    assert ran.text == "Elicitation completed: action=decline, content={}"

    ran = call_tool(session, "test_elicitation_sep1330_enums", answer=reply({"action": "cancel"}))
    props = ran.sent("elicitation/create")[0]["params"]["requestedSchema"]["properties"]
    assert props["untitledSingle"]["enum"] == ["option1", "option2", "option3"]
    assert all({"const", "title"} <= o.keys() for o in props["titledSingle"]["oneOf"])
    assert len(props["legacyEnum"]["enumNames"]) == len(props["legacyEnum"]["enum"])
    assert props["untitledMulti"]["items"]["enum"]
    assert props["titledMulti"]["items"]["anyOf"][0] == {"const": "value1", "title": "First Choice"}
    assert call_tool(open_session(), "test_elicitation", {"message": "x"}).result["isError"]


def test_an_input_of_several_requests_asks_them_all_at_once() -> None:
    session = open_session(capabilities=ALL_CAPABILITIES)

    def answer(request: JSON) -> JSON:
        results = {
            "elicitation/create": {"action": "accept", "content": {"name": "Ann"}},
            "sampling/createMessage": {
                "role": "assistant",
                "content": {"type": "text", "text": "Hi"},
                "model": "m",
            },
            "roots/list": {"roots": []},
        }
        return {"jsonrpc": "2.0", "id": request["id"], "result": results[request["method"]]}

    ran = call_tool(session, "test_input_required_result_multiple_inputs", answer=answer)
    assert ran.asked_together == [3]  # one Ask sends the three, then waits
    keys = [m["params"]["_meta"]["io.agentgw/inputKey"] for m in ran.messages[:3]]
    assert keys == ["user_name", "greeting", "client_roots"]
    assert ran.text == "All inputs received: name=Ann, greeting=Hi"


def test_list_roots_asks_for_roots() -> None:
    session = open_session(capabilities=ALL_CAPABILITIES)
    roots = [{"uri": "file:///tmp", "name": "tmp"}]
    ran = call_tool(session, "list_roots", answer=reply({"roots": roots}))
    assert ran.sent("roots/list")[0]["params"] == {"_meta": {"io.agentgw/inputKey": "roots"}}
    assert json.loads(ran.text) == roots


def test_an_unanswered_ask_times_out_with_a_cancel_notice() -> None:
    session = open_session(capabilities=ALL_CAPABILITIES, ask_timeout=3.0)
    started = session.handle(_tool_request(4, "test_sampling", {"prompt": "x"}))
    assert isinstance(started, Start) and isinstance(started.effect, Ask)
    assert started.effect.timeout == 3.0
    ask_id = started.effect.message["id"]
    notice = started.call.time_out()
    assert notice == Emit(
        {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": ask_id, "reason": "timed out"},
        }
    )
    done = started.call.advance()
    assert isinstance(done, Done) and done.message["result"]["isError"] is True
    assert not session.asks and not session.calls
    assert session.handle({"jsonrpc": "2.0", "id": ask_id, "result": {}}) is None


# ---------------------------------------------------------------- resources


def test_resources_list_and_read() -> None:
    session = open_session()
    listed = rpc(session, "resources/list").result["resources"]
    assert {r["uri"] for r in listed} == set(RESOURCES)
    assert all(r["name"] and r["description"] and r["mimeType"] for r in listed)
    text = rpc(session, "resources/read", {"uri": "test://static-text"}).result["contents"]
    assert text == [
        {
            "uri": "test://static-text",
            "mimeType": "text/plain",
            "text": "This is the content of the static text resource.",
        }
    ]
    (binary,) = rpc(session, "resources/read", {"uri": "test://static-binary"}).result["contents"]
    assert binary["mimeType"] == "image/png" and base64.b64decode(binary["blob"])
    (readme,) = rpc(session, "resources/read", {"uri": "demo://readme"}).result["contents"]
    assert "agentgw demo server" in readme["text"]


def test_resource_template() -> None:
    session = open_session()
    (template,) = rpc(session, "resources/templates/list").result["resourceTemplates"]
    assert template["uriTemplate"] == "test://template/{id}/data"
    uri = "test://template/123/data"
    (contents,) = rpc(session, "resources/read", {"uri": uri}).result["contents"]
    assert contents["uri"] == uri
    assert json.loads(contents["text"]) == {
        "id": "123",
        "templateTest": True,
        "data": "Data for ID: 123",
    }


def test_unknown_resource_is_not_found() -> None:
    error = rpc(open_session(), "resources/read", {"uri": "test://nope"}).error
    assert error["code"] == -32002 and error["data"] == {"uri": "test://nope"}
    assert rpc(open_session(), "resources/read", {}).error["code"] == -32602


def test_subscribers_hear_about_counter_updates_on_the_session_stream() -> None:
    session = open_session()
    assert call_tool(session, "increment").unrelated == []
    assert rpc(session, "resources/subscribe", {"uri": "demo://counter"}).result == {}
    ran = call_tool(session, "increment")
    assert ran.text == "counter is now 2"
    assert ran.unrelated == [
        {
            "jsonrpc": "2.0",
            "method": "notifications/resources/updated",
            "params": {"uri": "demo://counter"},
        }
    ]
    (contents,) = rpc(session, "resources/read", {"uri": "demo://counter"}).result["contents"]
    assert contents["text"] == "2"
    assert rpc(session, "resources/unsubscribe", {"uri": "demo://counter"}).result == {}
    assert call_tool(session, "increment").unrelated == []


# ---------------------------------------------------------------- prompts


def test_prompts_list() -> None:
    prompts = rpc(open_session(), "prompts/list").result["prompts"]
    assert {p["name"] for p in prompts} == set(PROMPTS)
    assert {
        "test_simple_prompt",
        "test_prompt_with_arguments",
        "test_prompt_with_embedded_resource",
        "test_prompt_with_image",
        "test_input_required_result_prompt",
        "greeting",
    } == set(PROMPTS)
    with_args = next(p for p in prompts if p["name"] == "test_prompt_with_arguments")
    assert [(a["name"], a["required"]) for a in with_args["arguments"]] == [
        ("arg1", True),
        ("arg2", True),
    ]


def _prompt(session: DemoSession, name: str, args: JSON | None = None) -> list[JSON]:
    params: JSON = {"name": name}
    if args is not None:
        params["arguments"] = args
    messages: list[JSON] = rpc(session, "prompts/get", params).result["messages"]
    return messages


def test_prompts_get() -> None:
    session = open_session()
    assert _prompt(session, "test_simple_prompt") == [
        {
            "role": "user",
            "content": {"type": "text", "text": "This is a simple prompt for testing."},
        }
    ]
    (message,) = _prompt(session, "test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
    assert message["content"]["text"] == "Prompt with arguments: arg1='a', arg2='b'"
    embedded = _prompt(session, "test_prompt_with_embedded_resource", {"resourceUri": "x://y"})
    assert embedded[0]["content"]["type"] == "resource"
    assert embedded[0]["content"]["resource"]["uri"] == "x://y"
    image = _prompt(session, "test_prompt_with_image")
    assert image[0]["content"]["type"] == "image" and image[0]["content"]["data"]
    (greeting,) = _prompt(session, "greeting", {"name": "Ada"})
    assert "Ada" in greeting["content"]["text"]


def test_prompts_get_errors() -> None:
    session = open_session()
    assert rpc(session, "prompts/get", {"name": "nope"}).error["code"] == -32602
    params = {"name": "test_prompt_with_arguments", "arguments": {"arg1": "a"}}
    error = rpc(session, "prompts/get", params).error
    assert error == {"code": -32602, "message": "missing argument: arg2"}


# ---------------------------------------------------------------- completion


def test_completion_of_prompt_and_template_arguments() -> None:
    session = open_session()

    def complete(ref: JSON, name: str, value: str) -> JSON:
        params = {"ref": ref, "argument": {"name": name, "value": value}}
        completion: JSON = rpc(session, "completion/complete", params).result["completion"]
        return completion

    prompt = {"type": "ref/prompt", "name": "test_prompt_with_arguments"}
    assert complete(prompt, "arg1", "par") == {
        "values": ["paris", "park", "party"],
        "total": 3,
        "hasMore": False,
    }
    assert complete(prompt, "arg1", "test")["values"] == []
    greeting = {"type": "ref/prompt", "name": "greeting"}
    assert complete(greeting, "name", "a")["values"] == ["Ada", "Alan"]
    template = {"type": "ref/resource", "uri": "test://template/{id}/data"}
    assert complete(template, "id", "1")["values"] == ["1", "123"]
    for bad in ({"type": "ref/prompt", "name": "nope"}, {"type": "ref/other"}):
        params = {"ref": bad, "argument": {"name": "x", "value": ""}}
        assert rpc(session, "completion/complete", params).error["code"] == -32602


# ---------------------------------------------------------------- wire


def test_classify() -> None:
    assert classify({"jsonrpc": "2.0", "id": 1, "method": "x"}) == "request"
    assert classify({"jsonrpc": "2.0", "method": "x"}) == "notification"
    assert classify({"jsonrpc": "2.0", "id": "a", "result": {}}) == "response"
    assert classify({"jsonrpc": "2.0", "id": "a", "error": {}}) == "response"
    assert classify({"jsonrpc": "2.0", "id": "a", "result": {}, "error": {}}) == "invalid"
    assert classify({"jsonrpc": "2.0", "id": 1.5, "method": "x"}) == "invalid"
    assert classify([]) == "invalid"


def test_sse_encoding_and_event_ids() -> None:
    assert encode_sse('{"a":1}', event_id="3-1") == b'id: 3-1\ndata: {"a":1}\n\n'
    assert encode_sse("", event_id="3-0", retry_ms=500) == b"id: 3-0\nretry: 500\ndata: \n\n"
    assert encode_sse("a\nb") == b"data: a\ndata: b\n\n"
    assert parse_event_id("3-12") == ("3", 12)
    assert parse_event_id("a-b-7") == ("a-b", 7)
    for bad in ("3", "-1", "3-", "3-x", "3-" + "9" * 19):
        assert parse_event_id(bad) is None


def test_accept_header_matching() -> None:
    both = "application/json, text/event-stream"
    assert accepts(both, "application/json") and accepts(both, "text/event-stream")
    assert accepts("*/*", "text/event-stream")
    assert accepts("text/*;q=0.5", "text/event-stream")
    assert not accepts("application/json", "text/event-stream")
    assert not accepts(None, "application/json")


@pytest.mark.parametrize(
    ("host", "origin", "allowed"),
    [
        ("127.0.0.1:8080", None, True),
        ("localhost", "http://localhost:3000", True),
        ("[::1]:80", "https://[::1]", True),
        ("LOCALHOST:1", None, True),
        ("evil.example.com", "http://evil.example.com", False),
        ("127.0.0.1:8080", "http://evil.example.com", False),
        ("127.0.0.1:8080", "null", False),
        (None, None, False),
        ("127.0.0.1.evil.com", None, False),
    ],
)
def test_dns_rebinding_protection(host: str | None, origin: str | None, allowed: bool) -> None:
    assert is_allowed_origin(host, origin) is allowed


def test_line_splitter_refuses_long_lines_and_keeps_going() -> None:
    lines = LineSplitter(limit=5)
    assert lines.feed(b"ab\ncd") == [b"ab"]
    assert lines.feed(b"e\r\n") == [b"cde"]
    assert lines.feed(b"toolong") == [None]
    assert lines.feed(b"still going") == []
    assert lines.feed(b"x\nok\n") == [b"ok"]
    assert lines.feed(b"123456\nz") == [None]
    assert lines.finish() == [b"z"]


def test_the_core_does_no_io() -> None:
    banned = {"trio", "anyio", "socket", "asyncio", "os", "subprocess", "select", "time"}
    pure = ("server", "wire", "effects", "content", "tools", "modern")
    for module in (core.__file__.replace("server.py", f"{name}.py") for name in pure):
        tree = ast.parse(Path(module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & banned, (module, names)


# ---------------------------------------------------------------- stdio


@attrs.define(eq=False)
class StdioPeer:
    """The client's side of ``serve_stdio`` over memory streams."""

    to_server: trio.testing.MemorySendStream
    from_server: trio.testing.MemoryReceiveStream
    buf: bytearray = attrs.field(factory=bytearray)

    async def send(self, message: JSON | bytes) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        await self.to_server.send_all(data)

    async def receive(self) -> JSON:
        while b"\n" not in self.buf:
            data = await self.from_server.receive_some(65536)
            assert data, "the server closed stdout"
            self.buf += data
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        message: JSON = json.loads(line)
        return message

    async def request(self, request_id: int, method: str, params: JSON | None = None) -> JSON:
        await self.send(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        )
        return await self.receive()


async def _open_stdio(
    nursery: trio.Nursery, session: DemoSession | None = None, capabilities: JSON | None = None
) -> StdioPeer:
    client_send, server_receive = trio.testing.memory_stream_one_way_pair()
    server_send, client_receive = trio.testing.memory_stream_one_way_pair()
    nursery.start_soon(partial(serve_stdio, server_receive, server_send, session=session))
    peer = StdioPeer(client_send, client_receive)
    params = {
        "protocolVersion": LATEST_VERSION,
        "capabilities": capabilities or {},
        "clientInfo": CLIENT_INFO,
    }
    assert (await peer.request(0, "initialize", params))["result"]
    await peer.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return peer


async def test_stdio_a_slow_call_does_not_hold_up_others(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        peer = await _open_stdio(nursery)
        await peer.send(_tool_request(1, "slow", {"seconds": 10, "steps": 2}, "p"))
        await peer.send(_tool_request(2, "echo", {"message": "quick"}))
        start = trio.current_time()
        echo = await peer.receive()
        assert echo["id"] == 2 and trio.current_time() == start
        progress = [await peer.receive(), await peer.receive()]
        assert [p["params"]["progress"] for p in progress] == [1, 2]
        done = await peer.receive()
        assert done["id"] == 1 and done["result"]["content"][0]["text"] == "slept 10 s in 2 steps"
        assert trio.current_time() - start == pytest.approx(10)
        nursery.cancel_scope.cancel()


async def test_stdio_cancelled_call_stops_and_never_answers(autojump_clock: Any) -> None:
    session = DemoSession()
    async with trio.open_nursery() as nursery:
        peer = await _open_stdio(nursery, session)
        await peer.send(_tool_request(1, "slow", {"seconds": 100, "steps": 100}, "p"))
        assert (await peer.receive())["method"] == "notifications/progress"
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
        await peer.send(cancel)
        assert (await peer.request(2, "ping")) == {"jsonrpc": "2.0", "id": 2, "result": {}}
        with trio.move_on_after(1000) as scope:
            await peer.receive()
        assert scope.cancelled_caught
        assert not session.calls
        nursery.cancel_scope.cancel()


async def test_stdio_sampling_round_trip_and_timeout(autojump_clock: Any) -> None:
    session = DemoSession(ask_timeout=30)
    async with trio.open_nursery() as nursery:
        peer = await _open_stdio(nursery, session, ALL_CAPABILITIES)
        await peer.send(_tool_request(1, "test_sampling", {"prompt": "hi"}))
        ask = await peer.receive()
        assert ask["method"] == "sampling/createMessage"
        result = {"role": "assistant", "content": {"type": "text", "text": "yo"}, "model": "m"}
        await peer.send({"jsonrpc": "2.0", "id": ask["id"], "result": result})
        answer = await peer.receive()
        assert answer["id"] == 1 and answer["result"]["content"][0]["text"] == "LLM response: yo"

        await peer.send(_tool_request(2, "test_sampling", {"prompt": "hi"}))
        ask = await peer.receive()
        start = trio.current_time()
        notice = await peer.receive()
        assert notice["method"] == "notifications/cancelled"
        assert notice["params"]["requestId"] == ask["id"]
        assert trio.current_time() - start == pytest.approx(30)
        answer = await peer.receive()
        assert answer["id"] == 2 and answer["result"]["isError"] is True
        nursery.cancel_scope.cancel()


async def test_stdio_refuses_bad_lines_and_goes_on() -> None:
    async with trio.open_nursery() as nursery:
        peer = await _open_stdio(nursery)
        await peer.send(b"x" * (MAX_LINE + 10) + b"\n")
        too_long = await peer.receive()
        assert too_long["id"] is None and too_long["error"]["code"] == -32600
        await peer.send(b"{nope\n\n")
        assert (await peer.receive())["error"]["code"] == -32700
        assert (await peer.request(3, "ping"))["result"] == {}
        nursery.cancel_scope.cancel()


async def test_stdio_ends_when_stdin_closes_cancelling_calls(autojump_clock: Any) -> None:
    session = DemoSession()
    async with trio.open_nursery() as nursery:
        peer = await _open_stdio(nursery, session)
        await peer.send(_tool_request(1, "slow", {"seconds": 100}))
        await trio.sleep(1)
        assert session.calls
        await peer.to_server.aclose()
    assert not session.calls


@attrs.define(eq=False)
class RecordingSink:
    sent: list[JSON] = attrs.field(factory=list)
    hangups: int = 0
    is_ended: bool = False

    async def send(self, message: JSON) -> None:
        self.sent.append(message)

    def hang_up(self) -> None:
        self.hangups += 1

    def end(self) -> None:
        self.is_ended = True


async def test_runner_drops_a_call_cancelled_while_its_task_was_waking(autojump_clock: Any) -> None:
    session = open_session()
    started = session.handle(_tool_request(1, "slow", {"seconds": 10, "steps": 1}))
    assert isinstance(started, Start)
    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        runner = CallRunner(nursery, sink.send)
        runner.start(started.call, started.effect, sink)
        await trio.sleep(5)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
        # The core has cancelled the call, but the task's scope is not
        # cancelled (as if its sleep ended first): it must still stop.
        assert isinstance(session.handle(cancel), Cancel)
    assert sink.sent == [] and sink.is_ended
    assert runner.running == 0


# ---------------------------------------------------------------- HTTP bookkeeping


async def test_event_stream_replays_after_an_id_and_bounds_the_standalone_log() -> None:
    stream = EventStream("0", can_hang_up=False, max_events=3)
    for n in range(5):
        stream.append({"n": n})
    assert [seq for seq, _ in stream.events_after(0)] == [3, 4, 5]
    ((seq, data),) = stream.events_after(4)
    assert seq == 5 and data == b'id: 0-5\ndata: {"n":4}\n\n'
    assert stream.events_after(5) == []
    stream.hang_up()
    assert not stream.is_hung_up  # only streams of resumable sessions hang up


async def test_sessions_keep_a_bounded_number_of_unread_finished_streams() -> None:
    async with trio.open_nursery() as nursery:
        app = DemoHttpApp(nursery)
        session = app.new_session(DemoSession())
        first = session.new_stream()
        first.end()
        for _ in range(MAX_KEPT_STREAMS):
            session.new_stream().end()
        running = session.new_stream()
        assert session.find_stream(first.key) is None
        assert len(session.streams) == MAX_KEPT_STREAMS + 1
        assert session.find_stream(running.key) is running
        assert session.find_stream("0") is session.standalone
        nursery.cancel_scope.cancel()


async def test_idle_sessions_expire(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        app = DemoHttpApp(nursery, session_ttl=100)
        nursery.start_soon(app.expire_sessions)
        idle = app.new_session(DemoSession())
        busy = app.new_session(DemoSession())
        busy.writers = 1
        await trio.sleep(90)
        assert set(app.sessions) == {idle.id, busy.id}
        await trio.sleep(200)
        assert set(app.sessions) == {busy.id}
        assert idle.is_closed
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- 2026-07-28


@attrs.define
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def new_hub(clock: Clock | None = None) -> Hub:
    return Hub(StateSealer(clock or Clock(), key=b"k" * 32))


def envelope(capabilities: JSON | None = None, **extra: Any) -> JSON:
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities or {},
        **extra,
    }


def stateless(
    hub: Hub, method: str, params: JSON | None = None, capabilities: JSON | None = None, **meta: Any
) -> Ran:
    params = {**(params or {}), "_meta": envelope(capabilities, **meta)}
    message = {"jsonrpc": "2.0", "id": 5, "method": method, "params": params}
    return drive(DemoSession(), handle_stateless(hub, message))


@pytest.mark.parametrize(
    ("meta", "header", "code"),
    [
        (None, None, -32602),
        ({"io.modelcontextprotocol/clientCapabilities": {}}, None, -32602),
        ({"io.modelcontextprotocol/protocolVersion": "2026-07-28"}, None, -32602),
        (envelope(**{"io.modelcontextprotocol/logLevel": "loud"}), None, -32602),
        (envelope(), "2025-11-25", -32020),
        ({**envelope(), "io.modelcontextprotocol/protocolVersion": "2099-01-01"}, None, -32022),
    ],
)
def test_the_envelope_is_checked(meta: JSON | None, header: str | None, code: int) -> None:
    params = {} if meta is None else {"_meta": meta}
    with pytest.raises(core.RpcError) as caught:
        parse_envelope(params, header)
    assert caught.value.code == code


def test_client_info_is_optional_and_discover_describes_the_server() -> None:
    assert parse_envelope({"_meta": envelope()}).client_info is None
    result = stateless(new_hub(), "server/discover").result
    assert result["supportedVersions"] == ["2026-07-28"]
    assert result["resultType"] == "complete" and result["cacheScope"] == "public"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "agentgw-demo"


def test_methods_of_the_handshake_are_gone_and_lists_carry_caching_hints() -> None:
    hub = new_hub()
    for method in ("initialize", "ping", "logging/setLevel", "resources/subscribe"):
        assert stateless(hub, method).error["code"] == -32601
    for method in ("tools/list", "prompts/list", "resources/list", "resources/templates/list"):
        result = stateless(hub, method).result
        assert result["ttlMs"] >= 0 and result["cacheScope"] == "public"
    read = stateless(hub, "resources/read", {"uri": "test://static-text"}).result
    assert read["resultType"] == "complete" and "ttlMs" in read


def test_a_missing_capability_refuses_the_request() -> None:
    ran = stateless(
        new_hub(), "tools/call", {"name": "test_sampling", "arguments": {"prompt": "x"}}
    )
    assert ran.error["code"] == -32021
    assert ran.error["data"] == {"requiredCapabilities": {"sampling": {}}}


def test_a_tool_that_asks_answers_input_required_then_completes() -> None:
    hub = new_hub()
    caps = {"sampling": {}}
    call = {"name": "test_sampling", "arguments": {"prompt": "hello"}}
    first = stateless(hub, "tools/call", call, caps).result
    assert first["resultType"] == "input_required"
    asked = first["inputRequests"]["sample"]
    assert asked["method"] == "sampling/createMessage"
    assert asked["params"]["messages"][0]["content"]["text"] == "hello"
    answer = {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"}
    retry = {**call, "inputResponses": {"sample": answer}, "requestState": first["requestState"]}
    done = stateless(hub, "tools/call", retry, caps)
    assert done.result["resultType"] == "complete" and done.text == "LLM response: hi"
    assert not [m for m in done.messages if "method" in m]  # no server-to-client request


def test_several_inputs_are_asked_at_once_and_missing_ones_asked_again() -> None:
    hub = new_hub()
    caps = {"sampling": {}, "elicitation": {}, "roots": {}}
    call = {"name": "test_input_required_result_multiple_inputs", "arguments": {}}
    first = stateless(hub, "tools/call", call, caps).result
    assert set(first["inputRequests"]) == {"user_name", "greeting", "client_roots"}
    partial_answer = {**call, "inputResponses": {"client_roots": {"roots": []}}}
    again = stateless(hub, "tools/call", partial_answer, caps).result
    assert set(again["inputRequests"]) == {"user_name", "greeting"}
    # What was answered is kept in the sealed state for the next round.
    rest = {
        "user_name": {"action": "accept", "content": {"name": "Ada"}},
        "greeting": {"role": "assistant", "content": {"type": "text", "text": "hey"}, "model": "m"},
    }
    last = {**call, "inputResponses": rest, "requestState": again["requestState"]}
    assert stateless(hub, "tools/call", last, caps).text == (
        "All inputs received: name=Ada, greeting=hey"
    )


def test_capabilities_decide_which_inputs_are_asked() -> None:
    call = {"name": "test_input_required_result_capabilities", "arguments": {}}
    result = stateless(new_hub(), "tools/call", call, {"sampling": {}}).result
    assert set(result["inputRequests"]) == {"sample_input"}


def test_prompts_get_can_ask_for_input() -> None:
    hub = new_hub()
    caps = {"elicitation": {}}
    get = {"name": "test_input_required_result_prompt"}
    first = stateless(hub, "prompts/get", get, caps).result
    assert list(first["inputRequests"]) == ["user_context"]
    context = {"user_context": {"action": "accept", "content": {"context": "tests"}}}
    done = stateless(hub, "prompts/get", {**get, "inputResponses": context}, caps).result
    assert done["messages"][0]["content"]["text"] == "Prompt with context: tests"


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s[:-3] + ("AAA" if not s.endswith("AAA") else "BBB"),
        lambda s: s + "-TAMPERED",
        lambda s: "not a state",
        lambda s: s.split(".")[0],
    ],
)
def test_a_request_state_that_was_altered_is_refused(change: Callable[[str], str]) -> None:
    hub = new_hub()
    caps = {"elicitation": {}}
    call = {"name": "test_input_required_result_tampered_state", "arguments": {}}
    state = stateless(hub, "tools/call", call, caps).result["requestState"]
    answer = {"confirm": {"action": "accept", "content": {"ok": True}}}
    retry = {**call, "inputResponses": answer, "requestState": change(state)}
    assert stateless(hub, "tools/call", retry, caps).error["code"] == -32602
    honest = {**retry, "requestState": state}
    assert stateless(hub, "tools/call", honest, caps).text.startswith("integrity-ok")


def test_a_request_state_is_bound_to_its_tool_and_expires() -> None:
    clock = Clock()
    sealer = StateSealer(clock, key=b"k" * 32, ttl=60)
    state = sealer.seal("tools/call", "a", {"x": {}})
    assert sealer.open(state, "tools/call", "a") == {"x": {}}
    for method, target in (("tools/call", "b"), ("prompts/get", "a")):
        with pytest.raises(core.RpcError):
            sealer.open(state, method, target)
    with pytest.raises(core.RpcError):
        StateSealer(clock, key=b"j" * 32).open(state, "tools/call", "a")
    clock.now += 61
    with pytest.raises(core.RpcError):
        sealer.open(state, "tools/call", "a")


@pytest.mark.parametrize("responses", [12345, {"user_name": 5}, [1]])
def test_malformed_input_responses_are_invalid_params(responses: Any) -> None:
    call = {"name": "test_input_required_result_elicitation", "inputResponses": responses}
    assert stateless(new_hub(), "tools/call", call, {"elicitation": {}}).error["code"] == -32602


def test_logs_only_for_a_request_that_asks_for_a_level() -> None:
    hub = new_hub()
    quiet = stateless(hub, "tools/call", {"name": "test_tool_with_logging"})
    assert quiet.sent("notifications/message") == []
    loud = stateless(
        hub,
        "tools/call",
        {"name": "test_tool_with_logging"},
        **{"io.modelcontextprotocol/logLevel": "info"},
    )
    assert len(loud.sent("notifications/message")) == 3


def test_listen_acknowledges_and_the_hub_sends_only_what_was_asked() -> None:
    hub = new_hub()
    params = {"notifications": {"promptsListChanged": True, "resourcesListChanged": True}}
    message = {"jsonrpc": "2.0", "id": "L", "method": "subscriptions/listen"}
    outcome = handle_stateless(hub, {**message, "params": {**params, "_meta": envelope()}})
    assert isinstance(outcome, Listen)
    assert outcome.acknowledgment["params"] == {
        "notifications": {"promptsListChanged": True},  # resource lists never change here
        "_meta": {"io.modelcontextprotocol/subscriptionId": "L"},
    }
    got: list[JSON] = []
    token = hub.listen(outcome.request_id, outcome.filter, got.append)
    stateless(hub, "tools/call", {"name": "test_trigger_tool_change"})
    stateless(hub, "tools/call", {"name": "test_trigger_prompt_change"})
    assert [m["method"] for m in got] == ["notifications/prompts/list_changed"]
    hub.unlisten(token)
    stateless(hub, "tools/call", {"name": "test_trigger_prompt_change"})
    assert len(got) == 1
    bad = {**message, "params": {"_meta": envelope()}}
    assert drive(DemoSession(), handle_stateless(hub, bad)).error["code"] == -32602


def test_the_counter_is_shared_by_stateless_requests() -> None:
    hub = new_hub()
    got: list[JSON] = []
    hub.listen(1, SubscriptionFilter(resources=frozenset({"demo://counter"})), got.append)
    assert stateless(hub, "tools/call", {"name": "increment"}).text == "counter is now 1"
    assert stateless(hub, "tools/call", {"name": "increment"}).text == "counter is now 2"
    read = stateless(hub, "resources/read", {"uri": "demo://counter"}).result
    assert read["contents"][0]["text"] == "2"
    assert [m["params"]["uri"] for m in got] == ["demo://counter", "demo://counter"]


def test_stateless_sessions_stay_apart_from_handshake_sessions() -> None:
    session = open_session()
    assert rpc(session, "server/discover").error["code"] == -32601
    assert rpc(session, "subscriptions/listen", {"notifications": {}}).error["code"] == -32601
    assert rpc(session, "tools/call", {"name": "test_trigger_tool_change"}).text
    ran = rpc(session, "tools/call", {"name": "test_trigger_tool_change"})
    assert ran.unrelated == [{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}]


@pytest.mark.parametrize(
    ("accept", "sse"),
    [
        ("application/json, text/event-stream", False),
        ("text/event-stream, application/json", True),
        ("application/json;q=0.5, text/event-stream", True),
        ("text/event-stream;q=0.1, application/json", False),
        (None, False),
    ],
)
def test_prefers_sse(accept: str | None, sse: bool) -> None:
    assert prefers_sse(accept) is sse


# ---------------------------------------------------------------- the tasks extension

TASKS = {"extensions": {"io.modelcontextprotocol/tasks": {}}}


def start(hub: Hub, method: str, params: JSON, capabilities: JSON | None = None) -> Outcome:
    params = {**params, "_meta": envelope(capabilities)}
    return handle_stateless(hub, {"jsonrpc": "2.0", "id": 9, "method": method, "params": params})


def finish_task(outcome: StartTask) -> None:
    """Drive a task's call as its runner would, with no inputs to gather."""
    effect = outcome.effect
    while not isinstance(effect, Done):
        assert isinstance(effect, Sleep | Emit), effect
        effect = outcome.call.advance()
    outcome.record.finish(effect.message)


def test_a_task_supporting_tool_becomes_a_task_for_clients_of_the_extension() -> None:
    hub = new_hub()
    call = {"name": "slow_compute", "arguments": {"seconds": 2}}
    outcome = start(hub, "tools/call", call, TASKS)
    assert isinstance(outcome, StartTask)
    created = outcome.message["result"]
    assert created["resultType"] == "task" and created["status"] == "working"
    assert created["ttlMs"] > 0 and created["createdAt"].endswith("Z")
    assert not {"result", "error", "inputRequests", "requestState", "task"} & created.keys()
    task_id = created["taskId"]
    working = stateless(hub, "tasks/get", {"taskId": task_id}, TASKS).result
    assert working["status"] == "working" and "result" not in working
    assert isinstance(outcome.effect, Sleep) and outcome.effect.seconds == 2
    finish_task(outcome)
    done = stateless(hub, "tasks/get", {"taskId": task_id}, TASKS).result
    assert done["status"] == "completed" and done["resultType"] == "complete"
    assert done["result"]["content"][0]["text"] == "computed in 2 s"
    # Without the extension the same call runs at once.
    assert isinstance(start(hub, "tools/call", call), Start)
    legacy = start(hub, "tools/call", {**call, "task": {"ttl": 1000}})
    assert isinstance(legacy, Start)


def test_a_task_waits_for_its_inputs_and_tasks_update_brings_them() -> None:
    hub = new_hub()
    outcome = start(hub, "tools/call", {"name": "multi_input"}, {**TASKS, "elicitation": {}})
    assert isinstance(outcome, StartTask)
    gather = outcome.effect
    assert isinstance(gather, Gather)
    record = outcome.record
    woken: list[str] = []
    record.on_change = lambda: woken.append(record.status)
    assert not record.wait_for(gather.requests)
    task_id = record.task_id
    waiting = stateless(hub, "tasks/get", {"taskId": task_id}, TASKS).result
    assert waiting["status"] == "input_required"
    assert set(waiting["inputRequests"]) == {"name", "confirm"}
    name = {"action": "accept", "content": {"name": "Ada"}}
    ack = stateless(
        hub, "tasks/update", {"taskId": task_id, "inputResponses": {"name": name}}, TASKS
    )
    assert ack.result == {"resultType": "complete", "_meta": ack.result["_meta"]}
    partial = stateless(hub, "tasks/get", {"taskId": task_id}, TASKS).result
    assert partial["status"] == "input_required" and list(partial["inputRequests"]) == ["confirm"]
    rest = {"confirm": {"action": "accept", "content": {"confirm": True}}, "stray": {}}
    stateless(hub, "tasks/update", {"taskId": task_id, "inputResponses": rest}, TASKS)
    assert woken == ["input_required", "working"]
    assert record.wait_for(gather.requests)
    effect = outcome.call.advance(record.replies(gather.requests))
    assert isinstance(effect, Done)
    record.finish(effect.message)
    assert record.describe()["result"]["content"][0]["text"] == "name=Ada"


def test_tool_errors_complete_and_protocol_errors_fail() -> None:
    hub = new_hub()
    failing = start(hub, "tools/call", {"name": "failing_job"}, TASKS)
    broken = start(hub, "tools/call", {"name": "protocol_error_job"}, TASKS)
    assert isinstance(failing, StartTask) and isinstance(broken, StartTask)
    finish_task(failing)
    finish_task(broken)
    assert failing.record.status == "completed" and failing.record.result is not None
    assert failing.record.result["isError"] is True
    assert broken.record.status == "failed" and broken.record.result is None
    assert broken.record.error == {"code": -32603, "message": "the job broke"}


def test_a_tool_that_only_runs_as_a_task_needs_the_extension() -> None:
    ran = stateless(new_hub(), "tools/call", {"name": "failing_job"})
    assert ran.error["code"] == -32021
    assert ran.error["data"] == {
        "requiredCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}
    }
    assert rpc(open_session(), "tools/call", {"name": "failing_job"}).result["isError"]


def test_input_first_then_a_task() -> None:
    hub = new_hub()
    caps = {**TASKS, "elicitation": {}}
    first = start(hub, "tools/call", {"name": "test_tool_with_task"}, caps)
    assert isinstance(first, Answer)
    asked = first.message["result"]
    assert asked["resultType"] == "input_required" and "taskId" not in asked
    name = {"user_name": {"action": "accept", "content": {"name": "Alice"}}}
    retry = {"name": "test_tool_with_task", "inputResponses": name}
    second = start(hub, "tools/call", {**retry, "requestState": asked["requestState"]}, caps)
    assert isinstance(second, StartTask)
    assert "requestState" not in second.message["result"]
    finish_task(second)
    assert second.record.describe()["result"]["content"][0]["text"].startswith("Hello, Alice")


def test_tasks_methods_need_the_extension_and_a_known_id() -> None:
    hub = new_hub()
    for method in ("tasks/get", "tasks/update", "tasks/cancel"):
        params = {"taskId": "x", "inputResponses": {}}
        assert stateless(hub, method, params).error["code"] == -32021
        assert stateless(hub, method, params, TASKS).error["code"] == -32602
    for removed in ("tasks/result", "tasks/list"):
        assert stateless(hub, removed, {"taskId": "x"}, TASKS).error["code"] == -32601
    assert rpc(open_session(), "tasks/get", {"taskId": "x"}).error["code"] == -32601


def test_cancel_stops_a_running_task_and_is_idempotent() -> None:
    hub = new_hub()
    outcome = start(
        hub, "tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}}, TASKS
    )
    assert isinstance(outcome, StartTask)
    stopped: list[bool] = []
    outcome.record.on_cancel = lambda: stopped.append(True)
    params = {"taskId": outcome.record.task_id}
    for _ in range(2):
        ack = stateless(hub, "tasks/cancel", params, TASKS).result
        assert set(ack) == {"resultType", "_meta"}
    assert stopped == [True] and outcome.record.status == "cancelled"
    outcome.record.finish({"result": {"content": []}})  # a late answer changes nothing
    assert stateless(hub, "tasks/get", params, TASKS).result["status"] == "cancelled"


def test_task_records_expire_and_are_bounded() -> None:
    clock = Clock()
    store = TaskStore(clock, ttl_ms=1000, max_tasks=2)
    first = store.create()
    store.create()
    with pytest.raises(core.RpcError):
        store.create()
    clock.now += 1.5
    with pytest.raises(core.RpcError) as caught:
        store.get(first.task_id)
    assert caught.value.code == -32602 and first.status == "cancelled"
    assert len(store) == 0


# ---------------------------------------------------------------- Mcp-Param-* headers


@pytest.mark.parametrize(
    ("headers", "args", "problem"),
    [
        ({"mcp-param-region": "eu"}, {"region": "eu"}, None),
        ({"mcp-param-region": "=?base64?ZXU=?="}, {"region": "eu"}, None),
        ({"mcp-param-region": "=?base64?ZXU?="}, {"region": "eu"}, "not valid Base64"),
        ({"mcp-param-region": "=?base64?Z!U=?="}, {"region": "eu"}, "not valid Base64"),
        ({"mcp-param-region": "=?base64?ZXU="}, {"region": "=?base64?ZXU="}, None),
        ({}, {"region": "eu"}, "missing Mcp-Param-Region"),
        ({"mcp-param-region": "us"}, {"region": "eu"}, "does not match"),
        ({"mcp-param-region": "eu"}, {}, "does not match"),
        ({}, {}, None),
    ],
)
def test_param_headers_match_the_arguments(
    headers: dict[str, str], args: JSON, problem: str | None
) -> None:
    schema = TOOLS["test_custom_header"].input_schema
    found = param_header_problem(schema, args, headers.get)
    assert (found is None) if problem is None else (found is not None and problem in found)
