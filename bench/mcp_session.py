"""The harness's own MCP client: open a session, check the echo tool on it, close it.

Blocking, standard library only, one keep-alive connection per call. It speaks
Streamable HTTP as a 2025-11-25 client: `initialize`, then
`notifications/initialized`, then requests with the `Mcp-Session-Id` and
`MCP-Protocol-Version` headers. A reply may come as `application/json` or as
an SSE stream; both are read. A session opened with an `authorization` value
sends it as the `Authorization` header on every request, `initialize` included.
An `https://` URL needs the client context (`tls`) that trusts the server.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "agentgw-bench", "version": "1"}
TIMEOUT_S = 10.0
_BASE_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
}


class McpError(Exception):
    """The system under test did not answer as an MCP server should; the message says how."""


@dataclass(frozen=True)
class McpSession:
    url: str
    session_id: str
    protocol_version: str
    authorization: str | None = None  # the `Authorization` header's value
    tls: ssl.SSLContext | None = None  # for an https:// URL

    def headers(self) -> dict[str, str]:
        return {
            **_base_headers(self.authorization),
            "Mcp-Session-Id": self.session_id,
            "MCP-Protocol-Version": self.protocol_version,
        }


def open_session(
    url: str, *, authorization: str | None = None, tls: ssl.SSLContext | None = None
) -> McpSession:
    """Send `initialize` and `notifications/initialized` to `url`.

    Args:
        authorization: the `Authorization` header to send on every request of the
            session, or None for none.
        tls: the client context for an https:// URL (None: the system's defaults).

    Raises:
        McpError: a status other than 200 (202 for the notification), no session id,
            or a reply without a result.
    """
    params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
    request = _request("init", "initialize", params)
    status, headers, body = post(url, _base_headers(authorization), request, "initialize", tls=tls)
    if status != 200:
        raise McpError(f"initialize: HTTP {status}: {_excerpt(body)}")
    result = _result(headers, body, "init", "initialize")
    session_id = headers.get("mcp-session-id")
    if not session_id:
        raise McpError(f"initialize: no Mcp-Session-Id header in the response: {_excerpt(body)}")
    version = result.get("protocolVersion")
    if not isinstance(version, str):
        raise McpError(f"initialize: no protocolVersion in the result: {_excerpt(body)}")
    session = McpSession(url, session_id, version, authorization, tls)
    notification = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    status, _, body = post(
        url, session.headers(), notification, "notifications/initialized", tls=tls
    )
    if status != 202:
        raise McpError(f"notifications/initialized: HTTP {status} (not 202): {_excerpt(body)}")
    return session


def list_tools(session: McpSession) -> list[str]:
    """The names `tools/list` gives (one page: the benchmark's servers have few tools)."""
    request = _request("list", "tools/list", {})
    status, headers, body = post(
        session.url, session.headers(), request, "tools/list", tls=session.tls
    )
    if status != 200:
        raise McpError(f"tools/list: HTTP {status}: {_excerpt(body)}")
    tools = _result(headers, body, "list", "tools/list").get("tools")
    if not isinstance(tools, list):
        raise McpError(f"tools/list: no tools in the result: {_excerpt(body)}")
    return [str(t.get("name")) for t in tools if isinstance(t, dict)]


def check_echo(session: McpSession, tool: str, message: str, *, calls: int) -> None:
    """Call `tool` `calls` times and check that each reply is a 200 echoing `message`.

    Raises:
        McpError: the first reply that is not.
    """
    for n in range(1, calls + 1):
        rpc_id = f"check-{n}"
        params = {"name": tool, "arguments": {"message": message}}
        request = _request(rpc_id, "tools/call", params)
        what = f"tools/call {tool} ({n} of {calls})"
        status, headers, body = post(session.url, session.headers(), request, what, tls=session.tls)
        if status != 200:
            raise McpError(f"{what}: HTTP {status}: {_excerpt(body)}")
        result = _result(headers, body, rpc_id, what)
        expected = [{"type": "text", "text": message}]
        if result.get("content") != expected or result.get("isError"):
            raise McpError(f"{what}: the result is not the echo of {message!r}: {_excerpt(body)}")


def call_error(session: McpSession, tool: str, message: str) -> dict[str, Any]:
    """Call `tool` once and return the JSON-RPC error it must answer with.

    Raises:
        McpError: a status other than 200, or a reply without an error.
    """
    params = {"name": tool, "arguments": {"message": message}}
    request = _request("denied", "tools/call", params)
    what = f"tools/call {tool}"
    status, headers, body = post(session.url, session.headers(), request, what, tls=session.tls)
    if status != 200:
        raise McpError(f"{what}: HTTP {status}: {_excerpt(body)}")
    error = _reply(headers, body, "denied", what).get("error")
    if not isinstance(error, dict):
        raise McpError(f"{what}: no JSON-RPC error in the reply: {_excerpt(body)}")
    return error


def close_session(session: McpSession) -> None:
    """DELETE the session; the answer does not matter."""
    _send(session.url, "DELETE", session.headers(), None, "DELETE", session.tls)


def _base_headers(authorization: str | None) -> dict[str, str]:
    if authorization is None:
        return dict(_BASE_HEADERS)
    return {**_BASE_HEADERS, "Authorization": authorization}


def _request(rpc_id: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def post(
    url: str,
    headers: dict[str, str],
    message: dict[str, Any],
    what: str,
    *,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """POST `message` as JSON with `headers`: the status, headers and body of the answer.

    Args:
        tls: the client context for an https:// URL.

    Raises:
        McpError: no answer (`what` names the request in the message).
    """
    return _send(url, "POST", headers, json.dumps(message).encode(), what, tls)


def _send(
    url: str,
    method: str,
    headers: dict[str, str],
    body: bytes | None,
    what: str,
    tls: ssl.SSLContext | None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    conn = (
        http.client.HTTPSConnection(host, parts.port, timeout=TIMEOUT_S, context=tls)
        if parts.scheme == "https"
        else http.client.HTTPConnection(host, parts.port, timeout=TIMEOUT_S)
    )
    try:
        conn.request(method, parts.path or "/", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise McpError(f"{what}: {method} {url}: {exc!r}") from None
    finally:
        conn.close()


def _result(headers: http.client.HTTPMessage, body: bytes, rpc_id: str, what: str) -> Any:
    """The `result` (an object) of the reply to `rpc_id`."""
    reply = _reply(headers, body, rpc_id, what)
    if "result" not in reply:
        raise McpError(f"{what}: no result: {_excerpt(body)}")
    result = reply["result"]
    if not isinstance(result, dict):
        raise McpError(f"{what}: the result is not an object: {_excerpt(body)}")
    return result


def _reply(headers: http.client.HTTPMessage, body: bytes, rpc_id: str, what: str) -> dict[str, Any]:
    """The JSON-RPC reply to `rpc_id`, from a JSON body or an SSE stream."""
    content_type = headers.get_content_type()
    if content_type == "application/json":
        messages = [_json(body, what)]
    elif content_type == "text/event-stream":
        messages = [_json(data, what) for data in _sse_data(body)]
    else:
        raise McpError(f"{what}: unexpected Content-Type {content_type!r}: {_excerpt(body)}")
    for message in messages:
        if isinstance(message, dict) and message.get("id") == rpc_id:
            return message
    raise McpError(f"{what}: no reply with id {rpc_id!r}: {_excerpt(body)}")


def _sse_data(body: bytes) -> list[bytes]:
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [
            line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")
        ]
        if data:
            events.append(b"\n".join(data))
    return events


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise McpError(f"{what}: not JSON: {_excerpt(data)}") from None


def _excerpt(body: bytes, limit: int = 300) -> str:
    text = body.decode(errors="replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
