"""A fuzz run over real sockets: random and mutated requests against a running
gateway in front of a recording upstream.

How this works: ``generate`` takes a request from a small corpus (plain,
chunked, pipelined, absolute-form, MCP JSON-RPC...) and mutates it: bytes
flipped, tokens that matter to a parser inserted (CRLF, bare LF, ``:``,
framing headers, huge numbers, underscore names), ranges deleted or
duplicated, two requests spliced. Cases run one at a time, each on its own
connection, read until the gateway closes it (a short ``idleTimeout`` makes
it close soon). After each case:

* the gateway answers a normal request (200 from the upstream);
* nothing was logged with a traceback, and no access line says
  ``internal error``;
* when the gateway refused the case itself (its own 4xx/5xx, not one the
  upstream sent: upstream answers carry ``x-upstream: 1``), the upstream got
  no request from it;
* every request the upstream ever got is clean: one valid Host, no
  underscore header names, not both Content-Length and Transfer-Encoding,
  the real peer last in X-Forwarded-For.

Cases come from a seeded ``random.Random``, so a run is reproducible from
its seed (timing aside).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio

from agentgw.wire.http import is_valid_host
from tests.e2e.support import Upstream, run_gateway, serve_upstream

# ---------------------------------------------------------------- cases

INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "0"},
        },
    }
).encode()
CALL = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"who","arguments":{}}}'
MCP_HEAD = (
    b"POST /mcp HTTP/1.1\r\nHost: gw.test\r\nAccept: application/json, text/event-stream\r\n"
    b"Content-Type: application/json\r\n"
)


def _post(path: bytes, body: bytes, head: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: gw.test\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path,
        head,
        len(body),
        body,
    )


CORPUS: list[bytes] = [
    b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    b"GET /a/b?c=d&e HTTP/1.1\r\nHost: gw.test:8080\r\nAccept: */*\r\nX-Trace: 1\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET http://gw.test/abs HTTP/1.1\r\nHost: other.test\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    _post(b"/echo", b"hello"),
    _post(b"/echo", b"", b"Expect: 100-continue\r\n"),
    b"POST /chunked HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-Forwarded-For: 1.2.3.4\r\nX-User: alice\r\n"
    b"Authorization: Bearer abc.def.ghi\r\nCookie: a=b\r\n\r\n",
    MCP_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(INIT), INIT),
    MCP_HEAD + b"Mcp-Session-Id: nope\r\nContent-Length: %d\r\n\r\n%s" % (len(CALL), CALL),
    MCP_HEAD + b"Content-Length: %d\r\n\r\n[%s,%s]" % (len(INIT) + len(CALL) + 3, INIT, CALL),
    b"GET /mcp HTTP/1.1\r\nHost: gw.test\r\nAccept: text/event-stream\r\n\r\n",
    b"DELETE /mcp HTTP/1.1\r\nHost: gw.test\r\nMcp-Session-Id: x\r\n\r\n",
]
TOKENS: list[bytes] = [
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"\x1b[31m",
    b",",
    b"0",
    b"-1",
    b"99999999999999999999999",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 5, 6\r\n",
    b"Host: evil.test\r\n",
    b"Host: a b\r\n",
    b"Host: \r\n",
    b"X_User: admin\r\n",
    b"X-Forwarded-For: 9.9.9.9\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive, x-hop\r\n",
    b"Upgrade: h2c\r\n",
    b" folded\r\n",
    b"http://evil.test",
    b"https://u@evil.test:99999",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"%00",
    b"/../..",
    b'{"jsonrpc":"2.0"',
    b'"id":null',
    b"[" * 80,
    b"\\ud800",
    b"1e999",
    b"X-Pad: " + b"v" * 9000 + b"\r\n",
    b"".join(b"X-F%d: v\r\n" % i for i in range(120)),
]


def _mutate(rng: random.Random, data: bytearray) -> None:
    if not data:
        data += rng.choice(TOKENS)
        return
    at = rng.randrange(len(data) + 1)
    choice = rng.randrange(7)
    if choice == 0:  # flip a byte
        data[min(at, len(data) - 1)] = rng.randrange(256)
    elif choice in (1, 2):  # insert a token that matters to a parser
        data[at:at] = rng.choice(TOKENS)
    elif choice == 3:  # delete a range
        del data[at : at + rng.randint(1, 16)]
    elif choice == 4:  # duplicate a range
        data[at:at] = data[at : at + rng.randint(1, 64)]
    elif choice == 5:  # replace a number
        numbers = list(re.finditer(rb"[0-9]+", data))
        if numbers:
            found = rng.choice(numbers)
            data[found.start() : found.end()] = rng.choice([b"0", b"-1", b"007", b"9" * 25, b"1 1"])
    else:  # splice with another request
        other = rng.choice(CORPUS)
        data[at:] = other[rng.randrange(len(other)) :]


def generate(rng: random.Random) -> bytes:
    """One case: a corpus request, usually mutated, sometimes pure noise."""
    if rng.random() < 0.03:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))) + b"\r\n\r\n"
    data = bytearray(rng.choice(CORPUS))
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 5, 8])):
        _mutate(rng, data)
    return bytes(data) or b"\r\n"


# ---------------------------------------------------------------- the peers


@attrs.define
class Recorder:
    """What the upstream saw, and what it should never have seen."""

    requests: int = 0
    violations: list[str] = attrs.field(factory=list)

    async def handle(self, req: h11.Request, body: bytes, up: Upstream) -> Any:
        self.requests += 1
        self._check(req)
        marker = [(b"x-upstream", b"1")]
        if req.target.startswith(b"/mcp-upstream"):
            return self._mcp(body, marker)
        return (
            200,
            [(b"content-type", b"text/plain"), *marker],
            b"" if req.method == b"HEAD" else b"ok",
        )

    def _check(self, req: h11.Request) -> None:
        names = [n for n, _ in req.headers]
        hosts = [v for n, v in req.headers if n == b"host"]
        problems = []
        if len(hosts) != 1 or not is_valid_host(hosts[0]):
            problems.append(f"Host {hosts!r}")
        if any(b"_" in n for n in names):
            problems.append("an underscore header name")
        if b"content-length" in names and b"transfer-encoding" in names:
            problems.append("both Content-Length and Transfer-Encoding")
        forwarded = [v for n, v in req.headers if n == b"x-forwarded-for"]
        if forwarded and not forwarded[-1].endswith(b"127.0.0.1"):
            problems.append(f"X-Forwarded-For {forwarded!r}")
        if problems:
            self.violations.append(f"upstream got {req.method!r} {req.target!r}: {problems}")

    def _mcp(self, body: bytes, marker: list[tuple[bytes, bytes]]) -> Any:
        try:
            message = json.loads(body)
        except ValueError:
            return 400, marker, b""
        if not isinstance(message, dict) or "id" not in message:
            return 202, marker, b""
        if message.get("method") == "initialize":
            result: Any = {
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "recorder", "version": "1"},
            }
        elif message.get("method") == "tools/list":
            result = {"tools": [{"name": "who", "inputSchema": {"type": "object"}}]}
        else:
            result = {"content": [{"type": "text", "text": "ok"}]}
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        headers = [(b"content-type", b"application/json"), (b"mcp-session-id", b"s1"), *marker]
        return 200, headers, json.dumps(answer).encode()


class LogWatch(logging.Handler):
    """Collects what must never be logged: tracebacks, errors, internal errors."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info or record.levelno >= logging.ERROR:
            self.problems.append(f"{record.name}: {message[:300]}")
        elif record.name == "agentgw.access" and 'error="internal error' in message:
            self.problems.append(f"access: {message[:300]}")


def fuzz_config(upstream_port: int, **http: Any) -> dict[str, Any]:
    up = f"127.0.0.1:{upstream_port}"
    mcp_route = {
        "name": "mcp",
        "matches": [{"path": {"pathPrefix": "/mcp"}}],
        "backends": [
            {"mcp": {"targets": [{"name": "rec", "mcp": {"host": f"http://{up}/mcp-upstream"}}]}}
        ],
    }
    host_route = {"name": "host", "backends": [{"host": up}]}
    return {
        "binds": [
            {
                "port": 0,
                "address": "127.0.0.1",
                "listeners": [{"name": "fuzz", "routes": [mcp_route, host_route]}],
            }
        ],
        "config": {
            "session": {"key": "22" * 32},
            "http": {
                "headerTimeout": "300ms",
                "bodyTimeout": "300ms",
                "idleTimeout": "150ms",
                "maxBodyBytes": "1MiB",
                "upstreamResponseTimeout": "5s",
                **http,
            },
        },
    }


@attrs.define(eq=False)
class Target:
    port: int
    recorder: Recorder
    watch: LogWatch


@asynccontextmanager
async def open_target(**http: Any) -> AsyncIterator[Target]:
    """A recording upstream and a gateway in front of it, logs watched;
    ``http`` overrides ``config.http`` keys."""
    recorder = Recorder()
    watch = LogWatch()
    log = logging.getLogger("agentgw")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(watch)
    try:
        async with serve_upstream(recorder.handle) as up:
            async with run_gateway(fuzz_config(up.port, **http)) as (_, port):
                yield Target(port, recorder, watch)
    finally:
        log.removeHandler(watch)
        log.setLevel(old_level)


# ---------------------------------------------------------------- running


@attrs.define
class Results:
    cases: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = attrs.field(factory=Counter)
    forwarded: int = 0
    violations: list[str] = attrs.field(factory=list)


_STATUS = re.compile(rb"^HTTP/1\.1 ([0-9]{3}) ")


async def send_case(port: int, data: bytes, cap: float = 5.0) -> bytes:
    """Send ``data``, read until the gateway closes (at most ``cap`` s)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reply = bytearray()
    try:
        with trio.move_on_after(cap):
            try:
                await stream.send_all(data)
            except trio.BrokenResourceError:
                pass
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                reply += chunk
    finally:
        await stream.aclose()
    return bytes(reply)


async def normal_request(port: int) -> bytes:
    return await send_case(
        port, b"GET /health HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    )


def _outcome(reply: bytes) -> tuple[str, bool]:
    """("<status> gateway" | "<status> upstream" | "no answer", refused by the gateway)."""
    match = _STATUS.match(reply)
    if match is None:
        return "no answer", False
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    status = match.group(1).decode()
    if b"\r\nx-upstream: 1" in head:
        return f"{status} upstream", False
    return f"{status} gateway", status[0] in "45"


async def run_case(target: Target, data: bytes, results: Results) -> None:
    before = target.recorder.requests
    reply = await send_case(target.port, data)
    outcome, refused = _outcome(reply)
    results.outcomes[outcome] += 1
    after_case = target.recorder.requests
    check = await normal_request(target.port)
    results.cases += 1
    problems = []
    if not (check.startswith(b"HTTP/1.1 200 ") and b"x-upstream: 1" in check.lower()):
        problems.append(f"the next normal request got {check[:60]!r}")
    # The normal request went out after the case's connection was closed.
    reached = max(after_case - before, target.recorder.requests - before - 1)
    results.forwarded += reached > 0
    if refused and reached and not outcome.startswith(("502", "503", "504")):
        problems.append(f"refused ({outcome}) but {reached} request(s) reached the upstream")
    problems += target.watch.problems
    target.watch.problems.clear()
    problems += target.recorder.violations
    target.recorder.violations.clear()
    for problem in problems:
        results.violations.append(f"case {data[:200]!r}: {problem}")


async def fuzz(
    target: Target, rng: random.Random, *, cases: int | None = None, seconds: float | None = None
) -> Results:
    """Run cases until ``cases`` were run or ``seconds`` passed."""
    results = Results()
    start = time.monotonic()
    while True:
        if cases is not None and results.cases >= cases:
            break
        if seconds is not None and time.monotonic() - start >= seconds:
            break
        await run_case(target, generate(rng), results)
    results.seconds = time.monotonic() - start
    return results
