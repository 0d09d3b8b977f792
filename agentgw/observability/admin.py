"""The admin server (``config.adminAddr``, default 127.0.0.1:15000).

How this works: ``Admin.handle`` answers agentgateway's paths where it has
them (``/config_dump``, ``/logging``) and agentgw's own (``/healthz/ready``,
``/healthz/live``, ``/sessions``, ``/targets``). Under ``--workers`` every
worker listens on the admin port (SO_REUSEPORT) and on a private Unix socket
(``WorkerSpec.admin_socket_path``) where it answers for itself alone; the
port's answer to ``/logging``, ``/sessions`` and ``/targets`` asks every
worker through those sockets, so any worker answers for all of them.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import Any, Final

import attrs
import trio

from agentgw._version import __version__
from agentgw.config.model import Config, McpTarget
from agentgw.config.redact import redact, redacted_document
from agentgw.errors import UpstreamError
from agentgw.observability import logs
from agentgw.relay.manager import SessionManager
from agentgw.relay.session import RelaySession
from agentgw.server.connection import ServerRequest
from agentgw.server.management import LIVE_PATH, READY_PATH
from agentgw.upstream.pool import ConnectionPool, Origin
from agentgw.workers import WorkerSpec

logger = logging.getLogger(__name__)

JSON: Final = b"application/json"
SIBLING_TIMEOUT: Final = 5.0
MAX_SIBLING_ANSWER: Final = 16 << 20
INDEX: Final = """agentgw admin

GET  /config_dump             the running configuration as JSON, secrets redacted
GET  /logging                 the current log level
POST /logging?level=<level>   set it: error, warn, info or debug (?reset: back to the config's)
GET  /healthz/ready           200 when serving, 503 while draining
GET  /healthz/live            200 while the process runs
GET  /sessions                MCP sessions and the state of their targets
GET  /targets                 MCP targets by route, with their sessions
"""


@attrs.frozen
class RouteLabel:
    """Names of the route an MCP backend is on."""

    bind: str
    listener: str
    route: str


@attrs.define(eq=False)
class Admin:
    """What the admin server reads and changes.

    Args:
        config: the running configuration.
        sessions: the MCP session manager.
        routes: each MCP backend's targets (the tuple in the config) with the
            names of its route.
        is_ready: whether the gateway takes traffic (not draining).
        pool: for asking sibling workers.
        worker: this worker, under ``--workers``.
    """

    config: Config
    sessions: SessionManager
    routes: Sequence[tuple[tuple[McpTarget, ...], RouteLabel]]
    is_ready: Callable[[], bool]
    pool: ConnectionPool
    worker: WorkerSpec | None = None
    _route_of: dict[int, RouteLabel] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.update(self.config, self.routes)

    def update(
        self, config: Config, routes: Sequence[tuple[tuple[McpTarget, ...], RouteLabel]]
    ) -> None:
        """A reload: the new config, and the MCP routes sessions may be on."""
        self.config, self.routes = config, routes
        self._route_of = {id(targets): label for targets, label in routes}

    def route_of(self, session: RelaySession) -> RouteLabel | None:
        return self._route_of.get(id(session.targets))

    # ------------------------------------------------------------ serving

    async def handle(self, req: ServerRequest) -> None:
        """A request on the admin port: for every worker."""
        await self._handle(req, everywhere=self.worker is not None)

    async def handle_local(self, req: ServerRequest) -> None:
        """A request on this worker's private socket: for this worker."""
        await self._handle(req, everywhere=False)

    async def _handle(self, req: ServerRequest, *, everywhere: bool) -> None:
        path, method = req.path, req.method
        query = urllib.parse.parse_qs(req.query, keep_blank_values=True)
        if path == "/logging" and method in ("GET", "POST"):
            await self._logging(req, query, everywhere)
            return
        if method not in ("GET", "HEAD"):
            allow = b"POST" if path == "/logging" else b"GET, HEAD"
            await req.respond(405, "method not allowed\n", [(b"allow", allow)])
            return
        if path == "/":
            await req.respond(200, INDEX)
        elif path == "/config_dump":
            doc = {"config": redacted_document(self.config), "version": {"version": __version__}}
            await req.respond(200, _json(doc), content_type=JSON)
        elif path == READY_PATH:
            ready = self.is_ready()
            await req.respond(200 if ready else 503, "ready\n" if ready else "draining\n")
        elif path == LIVE_PATH:
            await req.respond(200, "live\n")
        elif path in ("/sessions", "/targets"):
            local = self.sessions_doc() if path == "/sessions" else self.targets_doc()
            key = path[1:]
            if everywhere:
                local = {key: await self._everywhere(path, local[key])}
            await req.respond(200, _json(local), content_type=JSON)
        else:
            await req.respond(404, "not found\n")

    async def _logging(
        self, req: ServerRequest, query: dict[str, list[str]], everywhere: bool
    ) -> None:
        level = query.get("level", [None])[0]
        if req.method == "POST" and (level is not None or "reset" in query):
            try:
                logs.set_level(None if "reset" in query else level)
            except ValueError as exc:
                await req.respond(400, f"{exc}\n")
                return
            logger.warning("log level set to %s through the admin server", logs.current_level())
        text = f"current log level is {logs.current_level()}\n"
        if everywhere:
            answers = await self._siblings("POST" if req.method == "POST" else "GET", req.target)
            lines = [text] + [
                a.decode("utf-8", "replace") if a else "not answering\n" for a in answers.values()
            ]
            if len(set(lines)) > 1:
                text = "".join(
                    f"worker {i}: {line}"
                    for i, line in zip(self._worker_order(), lines, strict=True)
                )
        await req.respond(200, text)

    # ------------------------------------------------------------ documents

    def sessions_doc(self) -> dict[str, list[dict[str, Any]]]:
        out = []
        for session in list(self.sessions.sessions.values()):
            stats = session.statistics()
            label = self.route_of(session)
            targets = []
            for target in session.targets:
                if target.name in session.transports:
                    targets.append({"name": target.name, "state": "connected"})
                elif target.name in session.dead:
                    targets.append(
                        {"name": target.name, "state": "failed", "error": session.dead[target.name]}
                    )
                else:
                    targets.append({"name": target.name, "state": "starting"})
            item: dict[str, Any] = {
                "id": session.sid[:8],
                "route": attrs.asdict(label) if label else None,
                "protocolVersion": session.protocol_version,
                "idleSeconds": round(stats.idle_seconds, 3),
                "requestsInFlight": stats.pending,
                "streams": stats.streams,
                "shared": session.is_shared,
                "replica": session.is_replica,
                "targets": targets,
            }
            if self.worker is not None:
                item["worker"] = self.worker.index
            out.append(item)
        return {"sessions": out}

    def targets_doc(self) -> dict[str, list[dict[str, Any]]]:
        counts: dict[tuple[int, str], dict[str, int]] = {}
        errors: dict[tuple[int, str], str] = {}
        for session in list(self.sessions.sessions.values()):
            for target in session.targets:
                key = (id(session.targets), target.name)
                state = "connected" if target.name in session.transports else "failed"
                if target.name in session.dead:
                    errors[key] = session.dead[target.name]
                elif state == "failed":
                    state = "starting"
                tally = counts.setdefault(key, {})
                tally[state] = tally.get(state, 0) + 1
        out = []
        for targets, label in self.routes:
            for target in targets:
                key = (id(targets), target.name)
                item: dict[str, Any] = {
                    "route": attrs.asdict(label),
                    "name": target.name,
                    "transport": _transport(target),
                    "upstream": _upstream(target),
                    "sessions": counts.get(key, {}),
                    "lastError": errors.get(key),
                }
                if self.worker is not None:
                    item["worker"] = self.worker.index
                out.append(item)
        return {"targets": out}

    # ------------------------------------------------------------ workers

    def _worker_order(self) -> list[int]:
        assert self.worker is not None
        return [self.worker.index] + [i for i in range(self.worker.count) if i != self.worker.index]

    async def _everywhere(self, target: str, local: list[Any]) -> list[Any]:
        """``local`` and the same list from every sibling, concatenated."""
        out = list(local)
        for index, body in (await self._siblings("GET", target.encode())).items():
            key = target.strip("/")
            try:
                out.extend(json.loads(body)[key])
            except (ValueError, KeyError, TypeError):
                out.append({"worker": index, "error": "worker not answering"})
        return out

    async def _siblings(self, method: str, target: bytes) -> dict[int, bytes]:
        """Ask every other worker, at once; a worker that does not answer
        maps to b""."""
        worker = self.worker
        assert worker is not None
        answers: dict[int, bytes] = {}

        async def ask(index: int) -> None:
            path = worker.admin_socket_path(index)
            try:
                with trio.fail_after(SIBLING_TIMEOUT):
                    answers[index] = await _ask_unix(self.pool, path, method, target)
            except (UpstreamError, trio.TooSlowError) as exc:
                logger.info("admin: worker %d did not answer: %s", index, exc)
                answers[index] = b""

        async with trio.open_nursery() as nursery:
            for index in range(worker.count):
                if index != worker.index:
                    nursery.start_soon(ask, index)
        return dict(sorted(answers.items()))


async def _ask_unix(pool: ConnectionPool, path: str, method: str, target: bytes) -> bytes:
    exchange = pool.open_exchange(Origin(path, 0))
    headers = [(b"host", b"localhost"), (b"content-length", b"0")]
    try:
        await exchange.send_head(method.encode(), target, headers, b"")
        response = await exchange.receive_response(SIBLING_TIMEOUT)
        data = bytearray()
        async with aclosing(exchange.body(SIBLING_TIMEOUT)) as chunks:
            async for chunk in chunks:
                data += chunk
                if len(data) > MAX_SIBLING_ANSWER:
                    raise UpstreamError("admin answer too large")
        if response.status != 200:
            raise UpstreamError(f"answered HTTP {response.status}")
        return bytes(data)
    finally:
        exchange.release()


def _transport(target: McpTarget) -> str:
    for kind in ("stdio", "mcp", "sse", "websocket"):
        if getattr(target, kind) is not None:
            return kind
    return "unknown"  # pragma: no cover - the config requires one


def _upstream(target: McpTarget) -> str:
    if target.stdio is not None:
        return target.stdio.cmd  # not the args: they may hold credentials
    spec = target.mcp or target.sse or target.websocket
    assert spec is not None
    if spec.port is None:
        text = spec.host
    else:
        text = f"{spec.host}:{spec.port}{spec.path or ''}"
    redacted = redact({"url": text}, ())
    return str(redacted["url"])


def _json(doc: object) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"
