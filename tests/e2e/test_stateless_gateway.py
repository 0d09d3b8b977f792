"""The gateway as a 2026-07-28 server in its own right: statuses, error
codes and ``data``, headers, ``subscriptions/listen`` and trace context,
whatever revision the target speaks. Targets: the demo (which also speaks
2026-07-28), a test peer that speaks only 2025-11-25, and
server-everything (2025-11-25). Raw HTTP for the wire rules, the MCP SDK
2.3 client for what a client sees."""

from __future__ import annotations

import base64
import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from mcp import Client
from mcp.shared.exceptions import MCPError

from agentgw.relay import tasks
from tests.e2e.support import (
    Response,
    Upstream,
    open_client,
    recording_mcp_upstream,
    request,
    run_gateway,
    serve_upstream,
)
from tests.e2e.test_demo_conformance import demo_process
from tests.e2e.test_mcp_gateway import ACCEPT, DEMO, EVERYTHING, JSON_CT, ROOT, mcp_config, stdio

OLDER = [sys.executable, str(ROOT / "tests" / "peers" / "older_server.py")]
TWO_REVISIONS = [sys.executable, str(ROOT / "tests" / "peers" / "two_revisions.py")]
TASKS_LISTEN = [sys.executable, str(ROOT / "tests" / "peers" / "tasks_listen.py")]
COUNTER = "peer://counter"
VERSION = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
}
# target -> (argv, a tool that needs sampling and its arguments)
TARGETS: dict[str, tuple[list[str], str, dict[str, Any]]] = {
    "demo": (DEMO, "test_missing_capability", {}),
    "older": (OLDER, "ask_model", {}),
    "everything": ([EVERYTHING, "stdio"], "trigger-sampling-request", {"prompt": "hi"}),
}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


async def post(
    port: int,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    meta: Any = META,
    msg_id: Any = 42,
    version: str = VERSION,
    **extra: str,
) -> Response:
    """A 2026-07-28 request with conformant headers unless ``extra`` says
    otherwise (``mcp_method="..."``; None-valued keys are left out)."""
    body = dict(params or {})
    if meta is not None:
        body["_meta"] = meta
    hdrs: dict[str, str] = {"mcp-protocol-version": version, "mcp-method": method}
    name = body.get("uri") if method == "resources/read" else body.get("name")
    if isinstance(name, str):
        hdrs["mcp-name"] = name
    hdrs.update({k.replace("_", "-"): v for k, v in extra.items()})
    headers = [ACCEPT, JSON_CT, *((k.encode(), v.encode()) for k, v in hdrs.items() if v)]
    message = {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": body}
    return await request(port, "POST", "/mcp", headers=headers, body=json.dumps(message).encode())


def error_of(resp: Response) -> dict[str, Any]:
    body = json.loads(resp.body)
    assert body["id"] == 42, body  # every error answers the request's id
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize("target", sorted(TARGETS))
async def test_statuses_and_error_codes(target: str) -> None:
    argv, sampling_tool, args = TARGETS[target]
    async with run_gateway(mcp_config(stdio(target, argv))) as (_, port):
        # _meta: missing, without the version, without the capabilities
        for meta in (None, {k: v for k, v in META.items() if "Version" not in k}, {}):
            resp = await post(port, "server/discover", meta=meta)
            assert resp.status == 400 and error_of(resp)["code"] == -32602
        resp = await post(port, "server/discover")
        assert resp.status == 200
        discovered = json.loads(resp.body)["result"]
        assert discovered["supportedVersions"] == [VERSION]

        # a version the gateway does not serve
        meta = {**META, "io.modelcontextprotocol/protocolVersion": "v999.0.0"}
        resp = await post(port, "server/discover", meta=meta, version="v999.0.0")
        assert resp.status == 400
        error = error_of(resp)
        assert error["code"] == -32022
        assert error["data"] == {"requested": "v999.0.0", "supported": [VERSION]}

        # headers that do not match the body
        resp = await post(port, "server/discover", meta=meta)
        assert resp.status == 400 and error_of(resp)["code"] == -32020
        for wrong in ({"mcp_method": "prompts/list"}, {"mcp_method": ""}):
            resp = await post(port, "tools/list", **wrong)
            assert resp.status == 400 and error_of(resp)["code"] == -32020
        call = {"name": sampling_tool, "arguments": args}
        for wrong in ({"mcp_name": "wrong_tool_name"}, {"mcp_name": ""}):
            resp = await post(port, "tools/call", call, **wrong)
            assert resp.status == 400 and error_of(resp)["code"] == -32020

        # methods the revision removed, and unknown ones
        for method in (
            "initialize",
            "ping",
            "logging/setLevel",
            "resources/subscribe",
            "resources/unsubscribe",
            "unknown/method",
        ):
            resp = await post(port, method)
            assert resp.status == 404 and error_of(resp)["code"] == -32601, method

        # a tool that needs a capability the client did not declare
        resp = await post(port, "tools/call", call)
        assert resp.status == 400, resp.body
        error = error_of(resp)
        assert error["code"] == -32021
        assert error["data"] == {"requiredCapabilities": {"sampling": {}}}

        # and what passes
        resp = await post(port, "tools/list")
        assert resp.status == 200 and json.loads(resp.body)["result"]["resultType"] == "complete"


@pytest.mark.parametrize("target", ["demo", "older"])
async def test_unknown_resource_is_invalid_params(target: str) -> None:
    async with run_gateway(mcp_config(stdio(target, TARGETS[target][0]))) as (_, port):
        uri = "test://nonexistent-resource-for-conformance-testing"
        resp = await post(port, "resources/read", {"uri": uri})
        assert resp.status == 400
        error = error_of(resp)
        assert error["code"] == -32602 and error["data"]["uri"] == uri


async def test_param_headers_are_checked_against_the_tool_schema() -> None:
    async with run_gateway(mcp_config(stdio("older", OLDER))) as (_, port):
        call = {"name": "regional", "arguments": {"region": "Hello"}}
        valid = "=?base64?" + base64.b64encode(b"Hello").decode() + "?="
        for header in ("Hello", valid):
            resp = await post(port, "tools/call", call, mcp_param_region=header)
            assert resp.status == 200 and b"region Hello" in resp.body
        for header in ("=?base64?SGVsbG8?=", "=?base64?SGVs!!!bG8=?=", "Bye", ""):
            resp = await post(port, "tools/call", call, mcp_param_region=header)
            assert resp.status == 400 and error_of(resp)["code"] == -32020, header


async def test_trace_context_in_meta_reaches_the_target_unchanged() -> None:
    trace = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "rojo=00f067aa0ba902b7",
        "baggage": "tenant=blue",
    }
    async with run_gateway(mcp_config(stdio("older", OLDER))) as (_, port):
        resp = await post(port, "tools/call", {"name": "echo_meta"}, meta={**META, **trace})
        assert resp.status == 200, resp.body
        seen = json.loads(json.loads(resp.body)["result"]["content"][0]["text"])
        # the protocol envelope is the gateway's; the rest is the target's
        assert seen == trace


async def test_sdk_client_gets_missing_capability_and_sampling_needs() -> None:
    async with run_gateway(mcp_config(stdio("older", OLDER))) as (_, port):
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            assert client.protocol_version == VERSION
            with pytest.raises(MCPError) as caught:
                await client.call_tool("ask_model", {})
            assert caught.value.code == -32021
            assert (await client.call_tool("regional", {"region": "eu"})).content


async def test_listen_relays_changes_and_leaving_drops_the_subscription(tmp_path: Path) -> None:
    log = tmp_path / "peer.log"
    config = mcp_config(stdio("older", OLDER, env={"PEER_LOG": str(log)}))
    async with run_gateway(config) as (gw, port):
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(url) as client:
            listen = client.listen(
                tools_list_changed=True,
                prompts_list_changed=True,  # the target has no prompts: not honored
                resource_subscriptions=["peer://counter"],
            )
            async with listen as sub:
                assert sub.honored.tools_list_changed
                assert not sub.honored.prompts_list_changed
                assert sub.honored.resource_subscriptions == ["peer://counter"]
                assert "resources/subscribe peer://counter" in _read(log)
                await client.call_tool("touch", {})
                events = []
                with trio.fail_after(10):
                    async for event in sub:
                        events.append(event)
                        if len(events) == 2:
                            break
                kinds = sorted(type(e).__name__ for e in events)
                assert len(kinds) == 2 and kinds[0] != kinds[1], kinds
            # the client left: the upstream subscription goes, no stream stays
            with trio.fail_after(10):
                while "resources/unsubscribe peer://counter" not in _read(log):
                    await trio.sleep(0.05)
            (shared,) = [
                s for s in gw.sessions.sessions.values() if not s.sid.startswith("native-")
            ]
            with trio.fail_after(5):
                while shared.statistics().streams:
                    await trio.sleep(0.05)
            assert not shared.extras.get("listened_uris")


async def test_two_listeners_share_one_upstream_subscription(tmp_path: Path) -> None:
    log = tmp_path / "peer.log"
    config = mcp_config(stdio("older", OLDER, env={"PEER_LOG": str(log)}))
    async with run_gateway(config) as (_, port):
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(url) as one, Client(url) as two:
            async with one.listen(resource_subscriptions=["peer://counter"]) as first:
                async with two.listen(resource_subscriptions=["peer://counter"]):
                    pass
                # the second leaving keeps the first's subscription
                await one.call_tool("touch", {})
                with trio.fail_after(10):
                    event = await first.__anext__()
                assert "counter" in repr(event)
            with trio.fail_after(10):
                while "resources/unsubscribe" not in _read(log):
                    await trio.sleep(0.05)
        assert _read(log).count("resources/subscribe ") == 1
        assert _read(log).count("resources/unsubscribe ") == 1


async def test_listen_ends_gracefully_when_the_shared_session_ends() -> None:
    async with run_gateway(mcp_config(stdio("older", OLDER))) as (gw, port):
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            async with client.listen(tools_list_changed=True) as sub:
                (shared,) = [
                    s for s in gw.sessions.sessions.values() if not s.sid.startswith("native-")
                ]
                shared.close()
                with trio.fail_after(10):
                    events = [event async for event in sub]  # ends without SubscriptionLost
                assert events == []


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_listen_hears_a_native_target_and_an_older_one(
    transport: str, tmp_path: Path
) -> None:
    """A listen stream in front of two targets: the demo, which speaks
    2026-07-28 (its calls and its notifications go the native way, through
    an upstream subscriptions/listen), and a target that speaks only
    2025-11-25 (its shared session's stream and resources/subscribe)."""
    log = tmp_path / "peer.log"
    older = stdio("older", OLDER, env={"PEER_LOG": str(log)})
    async with AsyncExitStack() as stack:
        if transport == "stdio":
            demo = stdio("demo", DEMO)
        else:
            demo = {
                "name": "demo",
                "mcp": {"host": await stack.enter_async_context(demo_process())},
            }
        gw, port = await stack.enter_async_context(run_gateway(mcp_config(demo, older)))
        client = await stack.enter_async_context(Client(f"http://127.0.0.1:{port}/mcp"))
        counters = ["demo+demo://counter", "older+peer://counter"]
        listen = client.listen(tools_list_changed=True, resource_subscriptions=counters)
        async with listen as sub:
            assert sorted(sub.honored.resource_subscriptions) == counters
            # the native target's resource is subscribed through its listen stream
            asked = [line for line in _read(log).splitlines() if "subscribe" in line]
            assert asked == ["resources/subscribe peer://counter"]
            heard: list[str] = []

            async def hear(count: int) -> None:
                with trio.fail_after(10):
                    while len(heard) < count:
                        heard.append(repr(await sub.__anext__()))

            await client.call_tool("demo_test_trigger_tool_change", {})
            await hear(1)
            await client.call_tool("demo_increment", {})
            await hear(2)
            assert "demo+demo://counter" in heard[1]
            await client.call_tool("older_touch", {})
            await hear(4)
            assert any("older+peer://counter" in event for event in heard[2:])
            assert ["demo+demo://counter" not in e and "older+" not in e for e in heard].count(
                True
            ) == 2, heard  # one tool list change from each target
            (native,) = [s for s in gw.sessions.sessions.values() if s.sid.startswith("native-")]
            assert native.statistics().pending == 1  # the upstream listen
        # the client left: so did the upstream listen
        with trio.fail_after(5):
            while native.statistics().pending:
                await trio.sleep(0.05)


async def test_a_target_that_speaks_2026_07_28_gets_lists_and_completions_as_they_are() -> None:
    """Every request of a 2026-07-28 client reaches a target that speaks
    that revision as it came, lists in a fan-out with an older target too:
    a stdio target's lists and calls are then answered by the same child,
    and no target runs a second one."""
    config = mcp_config(stdio("two", TWO_REVISIONS), stdio("older", OLDER))
    async with run_gateway(config) as (gw, port):
        listed = json.loads((await post(port, "tools/list")).body)["result"]
        names = {tool["name"] for tool in listed["tools"]}
        assert "two_modern" in names and "older_touch" in names, names
        assert "two_older" not in names
        ref = {"type": "ref/prompt", "name": "two_ask"}
        completed = await post(
            port, "completion/complete", {"ref": ref, "argument": {"name": "a", "value": ""}}
        )
        assert json.loads(completed.body)["result"]["completion"]["values"] == ["modern"]
        # One child process per target: each session opens only its own.
        opened = {
            s.sid.startswith("native-"): set(s.transports) for s in gw.sessions.sessions.values()
        }
        assert opened == {True: {"two"}, False: {"older"}}, opened


TASK_LISTEN_CASES = {
    "one target": ([stdio("tl", TASKS_LISTEN)], ["t1"], ["t1"]),
    "and an older one": (
        [stdio("tl", TASKS_LISTEN), stdio("older", OLDER)],
        ["tl_t1", "older_x"],
        ["tl_t1"],
    ),
    "two that speak it": (
        [stdio("tl", TASKS_LISTEN), stdio("tm", TASKS_LISTEN)],
        ["tl_t1", "tm_t2"],
        ["tl_t1", "tm_t2"],
    ),
}


@pytest.mark.parametrize("case", sorted(TASK_LISTEN_CASES))
async def test_task_notifications_reach_the_listen_stream_that_asked(case: str) -> None:
    """The tasks extension's ``taskIds`` filter goes to the target that owns
    each id (with several targets, ids are ``<target>_<id>``; the targets
    are listened to at once), and its ``notifications/tasks`` come back
    with the client's ids."""
    configured, asked, ours = TASK_LISTEN_CASES[case]
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "subscriptions/listen",
            "params": {"_meta": META, "notifications": {"taskIds": asked}},
        }
    ).encode()
    head = [
        (b"host", b"127.0.0.1"),
        ACCEPT,
        JSON_CT,
        (b"mcp-protocol-version", VERSION.encode()),
        (b"mcp-method", b"subscriptions/listen"),
        (b"content-length", str(len(body)).encode()),
    ]
    async with run_gateway(mcp_config(*configured)) as (_, port), open_client(port) as client:
        await client.send(h11.Request(method="POST", target="/mcp", headers=head))
        await client.send(h11.Data(data=body))
        await client.send(h11.EndOfMessage())
        received = b""
        with trio.fail_after(10):
            response = await client.next_event()
            assert response.status_code == 200
            while received.count(b"data: ") < 1 + len(ours):
                received += bytes((await client.next_event()).data)
        ack, *notes = (
            json.loads(line[6:]) for line in received.splitlines() if line.startswith(b"data: ")
        )
        assert ack["params"]["notifications"] == {"taskIds": ours}
        assert sorted(note["params"]["taskId"] for note in notes) == ours
        for note in notes:
            assert note["method"] == "notifications/tasks"
            assert note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == 7
        # nothing else: the log message it was not asked for is not relayed
        with trio.move_on_after(0.5):
            received = bytes((await client.next_event()).data)
            assert b"data: " not in received, received


async def test_callers_whose_credentials_reach_the_target_do_not_share_its_session() -> None:
    """The upstream session that 2026-07-28 requests go through is shared
    only by callers whose Authorization does not reach the target: each
    token that does gets its own, initialized with that token."""
    async with serve_upstream(recording_mcp_upstream) as up:
        config = mcp_config({"name": "t", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}})
        async with run_gateway(config) as (_, port):
            for token in ("Bearer alice", "Bearer bob", "Bearer alice", None, None):
                resp = await post(port, "tools/list", authorization=token or "")
                assert resp.status == 200, resp.body

    def authorization(request: h11.Request) -> bytes | None:
        return dict(request.headers).get(b"authorization")

    seen = [(json.loads(body).get("method"), authorization(r)) for r, body in up.seen if body]
    inits = [who for method, who in seen if method == "initialize"]
    assert sorted(inits, key=str) == [None, b"Bearer alice", b"Bearer bob"], seen
    lists = [who for method, who in seen if method == "tools/list"]
    assert lists == [b"Bearer alice", b"Bearer bob", b"Bearer alice", None, None]


async def test_a_target_that_failed_the_first_probe_is_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether a target speaks 2026-07-28 is asked once; a target that gave
    no answer then (down, busy, or it refused the first caller's
    credentials) is asked again later rather than taken for an older one
    for good."""
    monkeypatch.setattr(tasks, "REPROBE_AFTER", 1.0)
    probes = 0

    async def flaky(request: h11.Request, body: bytes, up: Upstream) -> Any:
        nonlocal probes
        message = json.loads(body or b"{}")
        params = message.get("params") or {}
        if message.get("method") == "server/discover":
            probes += 1
            if probes == 1:
                return 503, [(b"content-type", b"text/plain")], b"busy"
            result = {"supportedVersions": [VERSION], "capabilities": {"tools": {}}}
        elif message.get("method") == "tools/call":
            way = "native" if "_meta" in params else "older"
            result = {"content": [{"type": "text", "text": way}]}
        else:
            return await recording_mcp_upstream(request, body, up)
        reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        return 200, [(b"content-type", b"application/json")], json.dumps(reply).encode()

    async with serve_upstream(flaky) as up:
        config = mcp_config({"name": "t", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}})
        async with run_gateway(config) as (_, port):
            call = {"name": "who", "arguments": {}}
            ways = []
            for _ in range(2):
                answer = json.loads((await post(port, "tools/call", call)).body)
                ways.append(answer["result"]["content"][0]["text"])
                await trio.sleep(1.1)
    assert ways == ["older", "native"]
    assert probes == 2


async def test_listen_subscribes_only_to_what_the_caller_may_read(tmp_path: Path) -> None:
    log = tmp_path / "peer.log"
    config = mcp_config(stdio("older", OLDER, env={"PEER_LOG": str(log)}))
    route = config["binds"][0]["listeners"][0]["routes"][0]
    route["policies"] = {"mcpAuthorization": {"rules": ['mcp.tool.name == "touch"']}}
    async with run_gateway(config) as (_, port):
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            listen = client.listen(tools_list_changed=True, resource_subscriptions=[COUNTER])
            async with listen as sub:
                assert sub.honored.tools_list_changed
                assert not sub.honored.resource_subscriptions
    assert "resources/subscribe" not in _read(log)


async def test_an_unreachable_target_is_a_5xx_with_the_request_id() -> None:
    async with run_gateway(mcp_config(stdio("dead", ["/bin/false"]))) as (_, port):
        resp = await post(port, "tools/list")
        assert resp.status in (502, 503), resp
        assert error_of(resp)["code"] == -32603
