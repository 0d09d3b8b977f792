"""Multi-round tool results (MRTR, 2026-07-28, SEP-2322) at the gateway, with
no I/O: the retry's parameters, the sealed ``requestState`` and the
``input_required`` result.

How this works: a request that needs input from the client ends with an
``input_required`` result: ``inputRequests`` (key -> a server-to-client
request) and a ``requestState`` the client echoes, with ``inputResponses``,
in its retry. The gateway never hands a client a state it could steer: the
``requestState`` a client sees is a ``GatewayState`` sealed with AES-256-GCM
under the session key (``mcp/session_token.py``), with its own associated
data. It names the target, the method and the name of the call, the worker
that holds it, and either the suspended upstream call (``flight``: a
2025-11-25 target's server-to-client requests translated into rounds) or the
target's own ``requestState`` (``upstream_state``: a target that answered
``input_required`` itself). A state that does not open, or that names
another call, is refused with -32602.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Collection
from typing import Any, TypeGuard

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agentgw.errors import InvalidParams

ASSOCIATED_DATA = b"agentgw-mrtr-v1"
NONCE_BYTES = 12
MAX_STATE_CHARS = 64 * 1024
# The requests whose result may be input_required (SEP-2322); tasks/result
# is the tasks extension's.
INPUT_METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})
# What each input request needs the client to have declared.
INPUT_CAPABILITY = {
    "elicitation/create": "elicitation",
    "sampling/createMessage": "sampling",
    "roots/list": "roots",
}
INPUT_REQUIRED = "input_required"
INPUT_KEY_META = "io.agentgw/inputKey"


@attrs.frozen
class Retry:
    """What a request brings for MRTR: its answers and its sealed state."""

    responses: dict[str, dict[str, Any]]
    state: str | None


def parse_retry(params: dict[str, Any]) -> Retry:
    """The ``inputResponses`` and ``requestState`` of a request.

    Raises:
        InvalidParams: ``inputResponses`` is not a map of result objects, or
            ``requestState`` is not a string.
    """
    responses = params.get("inputResponses", {})
    if not isinstance(responses, dict) or not all(isinstance(v, dict) for v in responses.values()):
        raise InvalidParams("invalid params: inputResponses must map keys to results")
    state = params.get("requestState")
    if state is not None and not isinstance(state, str):
        raise InvalidParams("invalid params: requestState must be a string")
    return Retry(dict(responses), state)


def without_retry(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without the MRTR fields (a 2025-11-25 target has none)."""
    return {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}


def input_key(upstream_id: Any, params: Any, taken: Collection[str]) -> str:
    """The ``inputRequests`` key of a translated server-to-client request: the
    name the target gave the input (``_meta["io.agentgw/inputKey"]``), else
    the id the target gave the request, as text (unique among the target's
    requests in flight)."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    named = meta.get(INPUT_KEY_META) if isinstance(meta, dict) else None
    if isinstance(named, str) and named and named not in taken:
        return named
    return upstream_id if isinstance(upstream_id, str) else json.dumps(upstream_id)


def request_for_client(method: str, params: Any) -> dict[str, Any]:
    """An ``inputRequests`` entry: the target's request, without the key's name."""
    params = dict(params) if isinstance(params, dict) else {}
    meta = params.pop("_meta", None)
    if isinstance(meta, dict):
        kept = {k: v for k, v in meta.items() if k != INPUT_KEY_META}
        if kept:
            params["_meta"] = kept
    return {"method": method, "params": params}


def client_declares(capabilities: dict[str, Any], method: str) -> bool:
    """Whether a client that declared ``capabilities`` can answer ``method``."""
    name = INPUT_CAPABILITY.get(method)
    return name is not None and isinstance(capabilities.get(name), dict)


def input_required(requests: dict[str, dict[str, Any]], state: str) -> dict[str, Any]:
    """The ``input_required`` result asking for ``requests``."""
    return {"resultType": INPUT_REQUIRED, "inputRequests": requests, "requestState": state}


def is_input_required(result: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(result, dict) and result.get("resultType") == INPUT_REQUIRED


@attrs.frozen(kw_only=True)
class GatewayState:
    """What a sealed ``requestState`` holds.

    ``flight`` names a suspended upstream call, ``upstream_state`` is the
    target's own state (exactly one is set); ``worker`` is the index of the
    worker holding a flight (None in a gateway of one process).
    """

    target: str
    method: str
    name: str
    expires: float
    flight: str | None = None
    upstream_state: str | None = None
    worker: int | None = None

    def check_call(self, method: str, name: str | None, now: float) -> None:
        """Refuse a retry of another call, or too late.

        Raises:
            InvalidParams: -32602.
        """
        if method != self.method or (name or "") != self.name:
            raise InvalidParams("invalid requestState", detail="the state names another call")
        if now > self.expires:
            raise InvalidParams("invalid requestState", detail="the state expired")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@attrs.define(eq=False, repr=False)
class StateSealer:
    """Seals ``GatewayState`` into ``requestState`` strings and opens them."""

    key: bytes = attrs.field(repr=False)
    _aead: AESGCM = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._aead = AESGCM(self.key)

    def __repr__(self) -> str:
        return "<StateSealer AES-256-GCM>"

    def seal(self, state: GatewayState) -> str:
        doc = {
            "t": state.target,
            "m": state.method,
            "n": state.name,
            "e": state.expires,
            "f": state.flight,
            "u": state.upstream_state,
            "w": state.worker,
        }
        plain = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        nonce = os.urandom(NONCE_BYTES)
        return _b64encode(nonce + self._aead.encrypt(nonce, plain, ASSOCIATED_DATA))

    def open(self, text: str) -> GatewayState:
        """The state a ``requestState`` holds.

        Raises:
            InvalidParams: forged, altered, or sealed with another key (-32602).
        """
        bad = InvalidParams("invalid requestState", detail="the state does not open")
        if len(text) > MAX_STATE_CHARS:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise bad from None
        if _b64encode(raw) != text or len(raw) < NONCE_BYTES + 16:
            raise bad
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], ASSOCIATED_DATA)
            doc = json.loads(plain)
            return GatewayState(
                target=doc["t"],
                method=doc["m"],
                name=doc["n"],
                expires=float(doc["e"]),
                flight=doc["f"],
                upstream_state=doc["u"],
                worker=doc["w"],
            )
        except (InvalidTag, ValueError, KeyError, TypeError):
            raise bad from None


def expiry(seconds: float) -> float:
    return time.time() + seconds
