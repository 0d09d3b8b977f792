"""The pure side of MRTR at the gateway: sealed requestState, retries, keys."""

from __future__ import annotations

import time

import pytest

from agentgw.errors import InvalidParams
from agentgw.mcp import mrtr

KEY = bytes(range(32))


def _state(**over: object) -> mrtr.GatewayState:
    fields: dict[str, object] = {
        "target": "demo",
        "method": "tools/call",
        "name": "ask",
        "expires": time.time() + 60,
        "flight": "f1.0",
    }
    fields.update(over)
    return mrtr.GatewayState(**fields)  # type: ignore[arg-type]


def test_a_sealed_state_opens_to_itself_and_hides_what_it_holds() -> None:
    sealer = mrtr.StateSealer(KEY)
    state = _state(upstream_state="the target's secret", flight=None, worker=1)
    text = sealer.seal(state)
    assert "secret" not in text and "demo" not in text
    assert sealer.open(text) == state
    assert sealer.seal(state) != text  # a fresh nonce every time


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t + "-TAMPERED",
        lambda t: t[:-2],
        lambda t: t[:10] + ("A" if t[10] != "A" else "B") + t[11:],
        lambda t: "not base64 !",
        lambda t: "",
        lambda t: "A" * (mrtr.MAX_STATE_CHARS + 1),
    ],
)
def test_an_altered_state_is_refused(change: object) -> None:
    sealer = mrtr.StateSealer(KEY)
    text = sealer.seal(_state())
    with pytest.raises(InvalidParams) as caught:
        sealer.open(change(text))  # type: ignore[operator]
    assert caught.value.code == -32602


def test_a_state_sealed_with_another_key_is_refused() -> None:
    text = mrtr.StateSealer(bytes(32)).seal(_state())
    with pytest.raises(InvalidParams):
        mrtr.StateSealer(KEY).open(text)


def test_a_state_names_its_call_and_expires() -> None:
    state = _state()
    state.check_call("tools/call", "ask", time.time())
    with pytest.raises(InvalidParams):
        state.check_call("tools/call", "other", time.time())
    with pytest.raises(InvalidParams):
        state.check_call("prompts/get", "ask", time.time())
    with pytest.raises(InvalidParams):
        state.check_call("tools/call", "ask", time.time() + 120)


def test_parse_retry() -> None:
    assert mrtr.parse_retry({}) == mrtr.Retry({}, None)
    retry = mrtr.parse_retry({"inputResponses": {"a": {"x": 1}}, "requestState": "s"})
    assert retry == mrtr.Retry({"a": {"x": 1}}, "s")
    for bad in (
        {"inputResponses": None},
        {"inputResponses": {"a": 12345}},
        {"inputResponses": []},
        {"requestState": 3},
    ):
        with pytest.raises(InvalidParams):
            mrtr.parse_retry(bad)
    assert mrtr.without_retry({"name": "n", "inputResponses": {}, "requestState": "s"}) == {
        "name": "n"
    }


def test_an_input_is_keyed_by_the_name_the_target_gives_it_else_by_its_id() -> None:
    named = {"_meta": {mrtr.INPUT_KEY_META: "user_name"}}
    assert mrtr.input_key("s1", named, ()) == "user_name"
    assert mrtr.input_key("s1", named, {"user_name"}) == "s1"  # taken in this round
    assert mrtr.input_key(7, {}, ()) == "7"
    assert mrtr.request_for_client("roots/list", named) == {"method": "roots/list", "params": {}}
    kept = {"_meta": {mrtr.INPUT_KEY_META: "k", "other": 1}, "message": "m"}
    assert mrtr.request_for_client("elicitation/create", kept)["params"] == {
        "_meta": {"other": 1},
        "message": "m",
    }


def test_client_capabilities_decide_what_it_can_answer() -> None:
    caps = {"sampling": {}}
    assert mrtr.client_declares(caps, "sampling/createMessage")
    assert not mrtr.client_declares(caps, "elicitation/create")
    assert not mrtr.client_declares(caps, "tools/call")
    result = mrtr.input_required({"k": {"method": "roots/list", "params": {}}}, "st")
    assert mrtr.is_input_required(result) and result["requestState"] == "st"
    assert not mrtr.is_input_required({"content": []})
