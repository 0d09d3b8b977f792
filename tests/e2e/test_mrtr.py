"""MRTR through the gateway: 2026-07-28 clients get a 2025-11-25 target's
sampling, elicitation and roots requests as input_required rounds, and a
target's own input_required results with a sealed requestState."""

from __future__ import annotations

import json
import sys
from typing import Any

import mcp.types as types
import pytest
from mcp import Client

from tests.e2e.support import request, run_gateway
from tests.e2e.test_mcp_gateway import ACCEPT, DEMO, JSON_CT, ROOT, mcp_config, stdio

MRTR_PEER = [sys.executable, str(ROOT / "tests" / "peers" / "mrtr_server.py")]
# The demo without 2026-07-28: its requests mid-call become the gateway's rounds.
OLDER_DEMO = [sys.executable, str(ROOT / "tests" / "peers" / "older_demo.py")]
MODERN = [ACCEPT, JSON_CT, (b"mcp-protocol-version", b"2026-07-28")]
CAPABILITIES = {"elicitation": {}, "sampling": {}, "roots": {}}


def _call(msg_id: int, name: str, **extra: Any) -> bytes:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": CAPABILITIES,
    }
    params = {"name": name, "arguments": {}, "_meta": meta, **extra}
    message = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}
    return json.dumps(message).encode()


async def _post(port: int, name: str, msg_id: int = 1, **extra: Any) -> dict[str, Any]:
    headers = [*MODERN, (b"mcp-method", b"tools/call"), (b"mcp-name", name.encode())]
    resp = await request(port, "POST", "/mcp", headers=headers, body=_call(msg_id, name, **extra))
    answer: dict[str, Any] = json.loads(resp.body)
    # A 2026-07-28 error answered as JSON has its code's status (-32602: 400).
    assert resp.status == (400 if "error" in answer else 200), resp.body
    return answer


@pytest.mark.parametrize(
    ("command", "sessions"),
    [(DEMO, 2), (OLDER_DEMO, 1)],
    ids=["relayed from a 2026-07-28 target", "translated from a 2025-11-25 target"],
)
async def test_sdk_client_gets_elicitation_and_sampling_over_a_stateless_session(
    command: list[str], sessions: int
) -> None:
    asked: list[str] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="Paris, said the test"),
            model="test-model",
        )

    async def elicitation(context: Any, params: Any) -> Any:
        asked.append("elicitation")
        return types.ElicitResult(action="accept", content={"name": "Alice", "color": "blue"})

    async with run_gateway(mcp_config(stdio("demo", command))) as (gw, port):
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(url, sampling_callback=sampling, elicitation_callback=elicitation) as c:
            assert c.protocol_version == "2026-07-28"
            named = await c.call_tool("test_input_required_result_elicitation", {})
            assert named.content[0].text == "Hello, Alice!"
            sampled = await c.call_tool("test_input_required_result_sampling", {})
            assert "Paris, said the test" in sampled.content[0].text
            # A handshake-era tool that asks in the middle of its call.
            plain = await c.call_tool("test_sampling", {"prompt": "say something"})
            assert "Paris, said the test" in json.dumps(plain.model_dump())
            rounds = await c.call_tool("test_input_required_result_multi_round", {})
            assert rounds.content[0].text == "Multi-round complete for Alice who likes blue"
        assert asked.count("elicitation") == 3 and asked.count("sampling") == 2
        # the shared upstream session, and the 2026-07-28 one if the target speaks it
        assert len(gw.sessions.sessions) == sessions


async def test_rounds_by_hand_and_tampered_or_foreign_states_are_refused() -> None:
    """The gateway's own rounds, for a target that asks mid-call."""
    async with run_gateway(mcp_config(stdio("demo", OLDER_DEMO))) as (_, port):
        first = (await _post(port, "test_input_required_result_multi_round"))["result"]
        assert first["resultType"] == "input_required"
        assert list(first["inputRequests"]) == ["step1"]
        assert first["inputRequests"]["step1"]["method"] == "elicitation/create"
        state = first["requestState"]

        # Altered, or replayed for another tool: -32602, and the call waits on.
        tampered = await _post(
            port,
            "test_input_required_result_multi_round",
            inputResponses={"step1": {"action": "accept", "content": {"name": "Eve"}}},
            requestState=state + "-TAMPERED",
        )
        assert tampered["error"]["code"] == -32602
        foreign = await _post(
            port,
            "test_input_required_result_elicitation",
            inputResponses={"user_name": {"action": "accept", "content": {"name": "Eve"}}},
            requestState=state,
        )
        assert foreign["error"]["code"] == -32602

        answer = {"action": "accept", "content": {"name": "Bob"}}
        second = await _post(
            port,
            "test_input_required_result_multi_round",
            inputResponses={"step1": answer},
            requestState=state,
        )
        result = second["result"]
        assert list(result["inputRequests"]) == ["step2"]
        assert result["requestState"] != state
        # A state is good for one retry only.
        again = await _post(
            port,
            "test_input_required_result_multi_round",
            inputResponses={"step1": answer},
            requestState=state,
        )
        assert again["error"]["code"] == -32602
        done = await _post(
            port,
            "test_input_required_result_multi_round",
            inputResponses={"step2": {"action": "accept", "content": {"color": "red"}}},
            requestState=result["requestState"],
        )
        text = done["result"]["content"][0]["text"]
        assert text == "Multi-round complete for Bob who likes red"

        # Answers the first request brings are used without a round.
        direct = await _post(
            port,
            "test_input_required_result_elicitation",
            inputResponses={"user_name": {"action": "accept", "content": {"name": "Cy"}}},
        )
        assert direct["result"]["content"][0]["text"] == "Hello, Cy!"


async def test_a_targets_own_input_required_result_is_relayed_with_a_sealed_state() -> None:
    config = mcp_config(stdio("peer", MRTR_PEER), stdio("demo", DEMO))
    async with run_gateway(config) as (_, port):
        first = (await _post(port, "peer_confirm"))["result"]
        assert first["resultType"] == "input_required"
        assert first["inputRequests"]["ok"]["method"] == "elicitation/create"
        state = first["requestState"]
        assert "peer-state" not in state  # sealed, not the target's own
        # The target's raw state is no state of the gateway's.
        forged = await _post(
            port,
            "peer_confirm",
            inputResponses={"ok": {"action": "accept"}},
            requestState="peer-state-42",
        )
        assert forged["error"]["code"] == -32602
        # Nor can the state steer the retry to another target.
        steered = await _post(
            port,
            "demo_echo",
            inputResponses={"ok": {"action": "accept"}},
            requestState=state,
        )
        assert steered["error"]["code"] == -32602
        done = await _post(
            port,
            "peer_confirm",
            inputResponses={"ok": {"action": "accept", "content": {"yes": True}}},
            requestState=state,
        )
        text = done["result"]["content"][0]["text"]
        answer = '{"action": "accept", "content": {"yes": true}}'
        assert text == f"confirmed with peer-state-42: {answer}"
        assert done["result"]["resultType"] == "complete"
