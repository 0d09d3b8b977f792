"""JSON-RPC 2.0 messages with no I/O: parse a body, classify, build replies.

Messages stay plain dicts (what ``json`` gives); this module only decides
whether a dict is a well-formed request, notification or response.
"""

from __future__ import annotations

import array
import itertools
import json
from typing import Any

from agentgw.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RESOURCE_NOT_FOUND,
    URL_ELICITATION_REQUIRED,
    ClientError,
)

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "RESOURCE_NOT_FOUND",
    "URL_ELICITATION_REQUIRED",
]

MAX_DEPTH = 64

JsonRpcId = str | int
Message = dict[str, Any]


class JsonRpcError(ClientError):
    """A body that is not valid JSON-RPC (400).

    When parsing an upstream's body, catch this and raise an
    ``UpstreamError`` instead: the fault is then the upstream's.

    Attributes:
        code: ``PARSE_ERROR`` or ``INVALID_REQUEST``.
        message: the JSON-RPC error message.
        id: the offending message's id when it had a valid one, else None.
    """

    def __init__(
        self, code: int, message: str, *, id: JsonRpcId | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message, detail=detail)
        self.code = code
        self.message = message
        self.id = id

    def to_message(self) -> Message:
        """The error response to send back."""
        return make_error(self.id, self.code, self.message)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Brackets become +1/-1 as signed bytes; every other byte is dropped.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[{]}"))


def nesting_depth(text: bytes) -> int:
    """How deeply the arrays and objects of a valid JSON text nest, counted
    in C-speed passes over the bytes (a walk of the parsed value in Python
    costs milliseconds on a large list)."""
    # Without its escapes, every '"' opens or closes a string: the parts
    # between them alternate outside, inside, outside...
    plain = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(plain.split(b'"')[::2])
    skeleton = outside.translate(_BRACKETS, _NOT_BRACKETS)
    return max(itertools.accumulate(array.array("b", skeleton)), default=0)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_valid_id(value: object) -> bool:
    """Whether ``value`` can be a request id: a str or an int (not a bool)."""
    return isinstance(value, str) or _is_int(value)


def _check(message: object) -> Message:
    if not isinstance(message, dict):
        raise JsonRpcError(INVALID_REQUEST, "message is not an object")
    id_ = message.get("id")
    known_id = id_ if is_valid_id(id_) else None
    if message.get("jsonrpc") != "2.0":
        raise JsonRpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"', id=known_id)
    if "method" in message:
        if not isinstance(message["method"], str):
            raise JsonRpcError(INVALID_REQUEST, "method must be a string", id=known_id)
        if "result" in message or "error" in message:
            raise JsonRpcError(INVALID_REQUEST, "request with result or error", id=known_id)
        if "id" in message and not is_valid_id(id_):
            raise JsonRpcError(INVALID_REQUEST, "id must be a string or an integer")
        params = message.get("params")
        if "params" in message and not isinstance(params, dict | list):
            raise JsonRpcError(INVALID_REQUEST, "params must be an object or array", id=known_id)
        return message
    has_result, has_error = "result" in message, "error" in message
    if has_result == has_error:
        raise JsonRpcError(INVALID_REQUEST, "need exactly one of method, result, error")
    if "id" not in message:
        raise JsonRpcError(INVALID_REQUEST, "response without id")
    if has_error:
        if id_ is not None and not is_valid_id(id_):
            raise JsonRpcError(INVALID_REQUEST, "id must be a string, an integer or null")
        error = message["error"]
        if not (
            isinstance(error, dict)
            and _is_int(error.get("code"))
            and isinstance(error.get("message"), str)
        ):
            raise JsonRpcError(INVALID_REQUEST, "error needs an integer code and a message")
    elif not is_valid_id(id_):
        raise JsonRpcError(INVALID_REQUEST, "id must be a string or an integer")
    return message


def parse_messages(body: bytes) -> tuple[list[Message], bool]:
    """Parse a JSON-RPC body: one message or a batch.

    Returns:
        The messages, and whether the body was a batch (a JSON array).

    Raises:
        JsonRpcError: ``PARSE_ERROR`` for text that is not UTF-8 JSON (NaN
            and Infinity included) or nests deeper than ``MAX_DEPTH``;
            ``INVALID_REQUEST`` for an empty batch or a message that is not
            a request, notification or response.
    """
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JsonRpcError(PARSE_ERROR, "parse error", detail=str(exc)[:200])
    # A body with few brackets cannot nest deeply: skip the walk.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and nesting_depth(body) > MAX_DEPTH:
        raise JsonRpcError(
            PARSE_ERROR, "parse error", detail=f"JSON nested deeper than {MAX_DEPTH}"
        )
    if isinstance(value, list):
        if not value:
            raise JsonRpcError(INVALID_REQUEST, "empty batch")
        return [_check(item) for item in value], True
    return [_check(value)], False


def is_request(message: Message) -> bool:
    """A message with a method and an id (an answer is expected)."""
    return "method" in message and "id" in message


def is_notification(message: Message) -> bool:
    """A message with a method and no id."""
    return "method" in message and "id" not in message


def is_response(message: Message) -> bool:
    """A result or an error answering a request."""
    return "method" not in message and ("result" in message or "error" in message)


def make_error(id: JsonRpcId | None, code: int, message: str, data: Any = None) -> Message:
    """An error response; ``id`` is None when the request's id is unknown."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


def make_result(id: JsonRpcId, result: Any) -> Message:
    """A successful response."""
    return {"jsonrpc": "2.0", "id": id, "result": result}


def dumps(message: Message | list[Message]) -> bytes:
    """Compact UTF-8 JSON for the wire.

    Raises:
        ValueError: the message holds NaN or Infinity.
    """
    # ASCII escapes: a lone surrogate ("\\ud800") is valid JSON but not UTF-8.
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
