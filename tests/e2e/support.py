"""Real peers for tests: small HTTP servers and clients on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import attrs
import h11
import trio

from agentgw import Gateway
from agentgw.config.load import config_from_dict

Headers = list[tuple[bytes, bytes]]


@attrs.define
class Response:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, event: Any) -> None:
        await self.stream.send_all(self.conn.send(event) or b"")

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Headers | None = None,
        body: bytes = b"",
        host: str = "127.0.0.1",
    ) -> Response:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        hs: Headers = [(b"host", host.encode())]
        hs.extend(headers or [])
        if body and not any(n.lower() == b"content-length" for n, _ in hs):
            hs.append((b"content-length", str(len(body)).encode()))
        await self.send(h11.Request(method=method, target=path, headers=hs))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())
        return await self.response()

    async def response(self) -> Response:
        event = await self.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = await self.next_event()
        assert isinstance(event, h11.Response), event
        chunks = []
        while True:
            ev = await self.next_event()
            if isinstance(ev, h11.Data):
                chunks.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                break
        return Response(event.status_code, list(event.headers), b"".join(chunks))

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def open_client(port: int) -> AsyncIterator[Client]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = Client(stream)
    try:
        yield client
    finally:
        await client.aclose()


async def request(port: int, method: str = "GET", path: str = "/", **kw: Any) -> Response:
    async with open_client(port) as client:
        return await client.request(method, path, **kw)


async def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = bytearray()
    with trio.fail_after(timeout):
        await stream.send_all(data)
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            out += chunk
    await stream.aclose()
    return bytes(out)


# ---------------------------------------------------------------- upstreams

UpstreamHandler = Callable[[h11.Request, bytes, "Upstream"], Awaitable[Any]]


@attrs.define(eq=False)
class Upstream:
    """A test HTTP server. ``connections`` and ``requests`` count what it saw;
    ``seen`` keeps each request with its body."""

    port: int = 0
    connections: int = 0
    requests: int = 0
    bytes_received: int = 0  # after TLS, if any: what the client sent in the clear
    seen: list[tuple[h11.Request, bytes]] = attrs.field(factory=list)
    open_streams: int = 0
    closed: trio.Event = attrs.field(factory=trio.Event)


async def _send_response(stream: trio.abc.Stream, conn: h11.Connection, result: Any) -> None:
    status, headers, body = result
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    if isinstance(body, bytes):
        if body:
            await stream.send_all(conn.send(h11.Data(data=body)))
    else:
        async with aclosing(body) as chunks:
            async for chunk in chunks:
                await stream.send_all(conn.send(h11.Data(data=chunk)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


@asynccontextmanager
async def serve_upstream(
    handler: UpstreamHandler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Upstream]:
    """An h11 server calling ``handler(request, body, upstream)`` which
    returns ``(status, headers, body)``; body is bytes or an async iterator.
    With ``ssl_context``, an HTTPS server (a failed handshake ends the
    connection before anything is read)."""
    up = Upstream()

    async def serve_one(stream: trio.abc.Stream) -> None:
        up.connections += 1
        up.open_streams += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    up.bytes_received += len(data)
                    conn.receive_data(bytes(data))
                    if not data and conn.their_state is h11.IDLE:
                        return
                    continue
                if isinstance(event, h11.Request):
                    chunks = []
                    while True:
                        ev = conn.next_event()
                        if ev is h11.NEED_DATA:
                            data = await stream.receive_some(65536)
                            up.bytes_received += len(data)
                            conn.receive_data(bytes(data))
                        elif isinstance(ev, h11.Data):
                            chunks.append(bytes(ev.data))
                        else:
                            break
                    body = b"".join(chunks)
                    up.requests += 1
                    up.seen.append((event, body))
                    await _send_response(stream, conn, await handler(event, body, up))
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            up.open_streams -= 1
            up.closed.set()
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        if ssl_context is None:
            serve = partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1")
        else:
            serve = partial(
                trio.serve_ssl_over_tcp,
                serve_one,
                0,
                ssl_context,
                host="127.0.0.1",
                https_compatible=True,
            )
        listeners = await nursery.start(serve)
        listener = listeners[0]
        sock = listener.transport_listener.socket if ssl_context else listener.socket
        up.port = sock.getsockname()[1]
        yield up
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serve_raw(handler: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    """A TCP server handing each connection's stream to ``handler``."""

    async def serve_one(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def echo_handler(request: h11.Request, body: bytes, up: Upstream) -> Any:
    return 200, [(b"content-type", b"text/plain")], b"echo:" + body


# ---------------------------------------------------------------- the gateway


def proxy_config(upstream_port: int, **settings: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "binds": [
            {
                "port": 0,
                "address": "127.0.0.1",
                "listeners": [
                    {
                        "name": "test",
                        "routes": [
                            {
                                "name": "upstream",
                                "backends": [{"host": f"127.0.0.1:{upstream_port}"}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    if settings:
        config["config"] = settings
    return config


@asynccontextmanager
async def run_gateway(config: dict[str, Any]) -> AsyncIterator[tuple[Gateway, int]]:
    gw = Gateway(config_from_dict(config))
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(gw.serve)
        yield gw, addresses[0].port
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- subprocesses


@contextmanager
def gateway_process(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run ``python -m agentgw ARGS``; yields (process, [listen lines])."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentgw", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(
                f"agentgw did not start: {proc.stderr.read() if proc.stderr else ''}"
            )
        yield proc, line
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


def port_of(line: str) -> int:
    return int(line.strip().rsplit(":", 1)[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def wait_until(predicate: Callable[[], bool], timeout: float = 5) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@asynccontextmanager
async def gateway_subprocess(
    *args: str, read_stderr: bool = True, **options: Any
) -> AsyncIterator[tuple[trio.Process, list[int]]]:
    """Run ``python -m agentgw ARGS`` as a real process; yields it and the
    ports of the listen lines it printed. Killed at exit if still running.
    Its stderr so far is in ``proc.stderr_data`` (unless ``read_stderr`` is
    False: then nobody reads it and the pipe fills up)."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "agentgw", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **options,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr = bytearray()

    async def collect_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.receive_some(65536):
            stderr.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            if read_stderr:
                nursery.start_soon(collect_stderr)
            out = b""
            with trio.fail_after(20):
                while b"listening on" not in out:
                    chunk = await proc.stdout.receive_some(4096)
                    if not chunk:
                        await proc.wait()
                        raise AssertionError(f"agentgw exited: {stderr.decode(errors='replace')}")
                    out += chunk
                await trio.sleep(0.05)
            ports = [
                int(line.rsplit(":", 1)[1])
                for line in out.decode().splitlines()
                if "listening on" in line
            ]
            proc.stderr_data = stderr  # type: ignore[attr-defined]
            yield proc, ports
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def free_port() -> int:
    """A port that was free a moment ago (for peers that need one given)."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def recording_mcp_upstream(req: h11.Request, body: bytes, up: Upstream) -> Any:
    """A Streamable HTTP MCP server in JSON mode with one tool, recording
    each request's headers (``up.seen``)."""
    message = json.loads(body) if body else {}
    headers = [(b"content-type", b"application/json"), (b"mcp-session-id", b"s1")]
    if "id" not in message:
        return 202, [], b""
    if message.get("method") == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "recorder", "version": "1"},
        }
    elif message.get("method") == "tools/list":
        result = {"tools": [{"name": "who", "inputSchema": {"type": "object"}}]}
    else:
        result = {"content": [{"type": "text", "text": "ok"}]}
    return (
        200,
        headers,
        json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode(),
    )


def initialize_message(version: str = "2025-06-18", msg_id: int = 1) -> dict[str, Any]:
    """A client's ``initialize`` request."""
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }


# What a scripted target does with a tools/call (or a GET): given the
# stream, its h11 connection and the request, once the request was read.
OnRequest = Callable[[trio.SocketStream, h11.Connection, h11.Request], Awaitable[None]]


async def send_response(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A whole response with a Content-Length, then the next cycle."""
    out = conn.send(
        h11.Response(
            status_code=status,
            headers=[*(headers or []), (b"content-length", str(len(body)).encode())],
        )
    )
    if body:
        out += conn.send(h11.Data(data=body)) or b""
    await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
    conn.start_next_cycle()


@attrs.define
class ScriptedMcpTarget:
    """A raw Streamable HTTP MCP target (for ``serve_raw``): it answers
    ``initialize`` (JSON) and notifications (202) as any server does, and
    hands each ``tools/call`` to ``on_call`` and each GET to ``on_get``
    (else 405). After ``on_call``, with ``call_closes``, it reads until the
    gateway closes the connection (``call_closed``, ``call_closed_at``);
    otherwise the connection serves on."""

    on_call: OnRequest
    on_get: OnRequest | None = None
    call_closes: bool = True
    session_id: bytes | None = None
    connections: int = 0
    calls: list[dict[str, Any]] = attrs.field(factory=list)
    call_heads: list[h11.Request] = attrs.field(factory=list)
    call_started: trio.Event = attrs.field(factory=trio.Event)
    call_closed: trio.Event = attrs.field(factory=trio.Event)
    call_closed_at: float | None = None

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if not isinstance(event, h11.Request):
                return
            body = b""
            while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
                if ev is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(ev, h11.Data):
                    body += ev.data
            if event.method == b"GET" and self.on_get is not None:
                await self.on_get(stream, conn, event)
                conn.start_next_cycle()
                continue
            if event.method != b"POST":
                await send_response(stream, conn, 405)
                continue
            message = json.loads(body)
            if message.get("method") == "tools/call":
                self.calls.append(message)
                self.call_heads.append(event)
                self.call_started.set()
                if not self.call_closes:
                    await self.on_call(stream, conn, event)
                    conn.start_next_cycle()
                    continue
                try:
                    await self.on_call(stream, conn, event)
                    while await stream.receive_some(65536):
                        pass
                except trio.BrokenResourceError:
                    pass
                self.call_closed_at = trio.current_time()
                self.call_closed.set()
                return
            session = [(b"mcp-session-id", self.session_id)] if self.session_id else []
            if "id" not in message:
                await send_response(stream, conn, 202, headers=session)
                continue
            result = {
                "protocolVersion": message.get("params", {}).get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "scripted", "version": "1"},
            }
            answer = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
            json_ct = [(b"content-type", b"application/json"), *session]
            await send_response(stream, conn, 200, answer.encode(), json_ct)
