"""The MCP endpoint on a route with an ``mcp`` backend: Streamable HTTP.

How this works: the HTTP layer only validates and finds the session; the
session (``relay/session.py``) owns the upstream transports. A POSTed
request is routed by method: list methods fan out to every target and are
merged (federated cursors keep pagination); calls go to the target named by
the prefix; the answer streams back as SSE so progress, logging and
server-to-client requests (sampling, elicitation, roots) reach the client
while the call runs. SSE streams carry keep-alive comments. The session id
given to the client is an AES-GCM token (``mcp/session_token.py``): it cannot
be read or forged, and another replica with the same key can resume it.
"""

from __future__ import annotations

import json
import logging
import secrets
import urllib.parse
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, TextMessage
from wsproto.events import Request as WsRequest

from agentgw._version import __version__
from agentgw.config.model import McpBackend, McpTarget
from agentgw.errors import ClientGone, UpstreamError
from agentgw.mcp import merge, names, versions
from agentgw.mcp.session_token import InvalidSession, SessionCodec, SessionState
from agentgw.policy import authz
from agentgw.policy.pipeline import (
    Identity,
    RequestView,
    RoutePolicies,
    request_variables,
    upstream_credentials,
)
from agentgw.policy.ratelimit import Limited, McpRateLimits
from agentgw.proxy import run_watching_client
from agentgw.relay.session import CHANNEL_SIZE, Message, RelaySession, SessionManager
from agentgw.server.connection import ServerRequest
from agentgw.tls import ClientTLS
from agentgw.upstream.pool import ConnectionPool
from agentgw.wire import jsonrpc
from agentgw.wire.http import header_value, is_websocket_upgrade, strip_hop_by_hop
from agentgw.wire.sse import encode_comment, encode_event
from agentgw.workers import owner_of_sid, session_suffix

logger = logging.getLogger(__name__)

Headers = Sequence[tuple[bytes, bytes]]
# What the relay session takes: headers, or headers per target.
UpstreamHeaders = Headers | Callable[[str], Headers]

JSON = b"application/json"
LIST_METHODS = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list"}
)
MAX_BODY = 4 << 20
TOKEN_CACHE_SIZE = 10_000
_DROP_HEADERS = frozenset({b"content-length", b"host", b"mcp-session-id", b"accept-encoding"})


@attrs.frozen
class McpRoute:
    """An ``mcp`` backend, compiled."""

    targets: tuple[McpTarget, ...]
    prefix: bool
    prefix_uris: bool
    fail_open: bool
    stateful: bool
    dns_rebinding_protection: bool = False
    passthrough_targets: frozenset[str] = frozenset()
    tls: Mapping[str, ClientTLS] = attrs.field(factory=dict)  # by target name
    rate_limits: McpRateLimits | None = None  # set by the gateway (agentgw.app)

    @property
    def resumable(self) -> bool:
        """Whether another process can take up a session of this route: only
        Streamable HTTP upstream sessions live outside this process."""
        return all(t.mcp is not None for t in self.targets)

    @classmethod
    def compile(cls, backend: McpBackend, tls: Mapping[str, ClientTLS] | None = None) -> McpRoute:
        mode = backend.prefix_mode or "conditional"
        n = len(backend.targets)
        return cls(
            targets=backend.targets,
            prefix=names.should_prefix(mode, n),
            prefix_uris=names.should_prefix(mode, n, uris=True),
            fail_open=backend.failure_mode == "failOpen",
            stateful=backend.stateful_mode != "stateless",
            # None (not given) is resolved by the gateway before compiling.
            dns_rebinding_protection=bool(backend.dns_rebinding_protection),
            passthrough_targets=frozenset(
                t.name
                for t in backend.targets
                if t.policies is not None and t.policies.has_passthrough
            ),
            tls=dict(tls or {}),
        )

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]


class McpError(Exception):
    """An HTTP-level refusal of an MCP request."""

    def __init__(self, status: int, message: str, code: int = -32600) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@attrs.define(eq=False)
class Caller:
    """Who sent a message, and the route's policies that judge it."""

    policies: RoutePolicies | None = None
    identity: Identity | None = None
    view: RequestView | None = None
    _variables: dict[str, object] | None = None

    @classmethod
    def of(
        cls, req: ServerRequest, policies: RoutePolicies | None, view: RequestView | None = None
    ) -> Caller:
        if view is None:
            peer = req.tls.peer if req.tls is not None else None
            view = RequestView(
                req.method, req.path, req.headers, req.host, req.client, req.scheme, peer
            )
        return cls(policies, req.identity, view)

    @property
    def rules(self) -> authz.RuleSet | None:
        return self.policies.mcp_authorization if self.policies is not None else None

    def variables(self) -> dict[str, object]:
        if self._variables is None:
            assert self.view is not None
            self._variables = request_variables(self.view, self.identity)
        return self._variables

    def allows(self, method: str, kind: authz.ResourceKind, name: str, target: str) -> bool:
        rules = self.rules
        if rules is None:
            return True
        variables = authz.mcp_variables(
            self.variables(), method=method, kind=kind, name=name, target=target
        )
        return isinstance(rules.evaluate(variables), authz.Allow)

    def upstream_headers(self, headers: Headers) -> Headers:
        if self.policies is None:
            return headers
        return upstream_credentials(self.policies, self.identity, list(headers))

    def headers_for(self, route: McpRoute, headers: Headers) -> UpstreamHeaders:
        """``backendAuth: passthrough`` on single targets: those targets get
        the caller's validated token back, the others do not."""
        identity = self.identity
        if identity is None or not route.passthrough_targets:
            return headers
        token = (b"authorization", b"Bearer " + identity.token.encode("latin-1"))
        with_token = [*(h for h in headers if h[0] != b"authorization"), token]
        return lambda target: with_token if target in route.passthrough_targets else headers


NOBODY = Caller()
_LIST_KINDS: dict[str, tuple[str, authz.ResourceKind]] = {
    "tools/list": ("tools", "tool"),
    "prompts/list": ("prompts", "prompt"),
    "resources/list": ("resources", "resource"),
    "resources/templates/list": ("resourceTemplates", "resource"),
}
_CALL_KINDS: dict[str, tuple[authz.ResourceKind, str]] = {
    "tools/call": ("tool", "Unknown tool"),
    "prompts/get": ("prompt", "Unknown prompt"),
    "resources/read": ("resource", "Unknown resource"),
    "resources/subscribe": ("resource", "Unknown resource"),
    "resources/unsubscribe": ("resource", "Unknown resource"),
}


class Outbox:
    """Where the answers to one client message go."""

    caller: Caller = NOBODY

    async def send(self, message: Message, *, final: bool) -> None:
        """Deliver one message; the base class drops it (notifications and
        answers have nothing to send back)."""

    async def ping(self) -> None:
        """Keep an idle stream alive (no-op where there is none)."""


@attrs.define(eq=False)
class PostOutbox(Outbox):
    """A Streamable HTTP POST: a lone final answer goes out as JSON; anything
    before it (progress, logging, sampling) turns the response into SSE."""

    req: ServerRequest
    caller: Caller = NOBODY
    headers: Headers = ()
    is_stream: bool = False

    async def _start_stream(self) -> None:
        if not self.is_stream:
            self.is_stream = True
            await self.req.send_head(
                200,
                [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    *self.headers,
                ],
            )

    async def send(self, message: Message, *, final: bool) -> None:
        if final and not self.is_stream:
            await _respond_json(self.req, message, self.headers)
            return
        await self._start_stream()
        await self.req.send_data(encode_event(json.dumps(message)))
        if final:
            await self.req.end()

    async def ping(self) -> None:
        await self._start_stream()
        await self.req.send_data(encode_comment("ping"))


@attrs.define(eq=False)
class ChannelOutbox(Outbox):
    """Legacy SSE and WebSocket: answers go to the connection's one stream."""

    send_channel: trio.MemorySendChannel[Message]
    caller: Caller = NOBODY

    async def send(self, message: Message, *, final: bool) -> None:
        try:
            await self.send_channel.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@attrs.define(eq=False)
class StatelessRevisionOutbox(Outbox):
    """Gives an older upstream's final result the 2026-07-28 shape."""

    inner: Outbox
    method: str

    @property
    def caller(self) -> Caller:  # type: ignore[override]
        return self.inner.caller

    async def send(self, message: Message, *, final: bool) -> None:
        if final and isinstance(message.get("result"), dict):
            result = versions.to_stateless_result(self.method, message["result"])
            message = {**message, "result": result}
        await self.inner.send(message, final=final)

    async def ping(self) -> None:
        await self.inner.ping()


@attrs.define(eq=False)
class McpEndpoint:
    manager: SessionManager
    codec: SessionCodec
    pool: ConnectionPool
    keepalive: float = 15.0
    ttl: float = 1800.0
    # By id(route), with the route: an id is only unique while its object lives.
    _shared: dict[int, tuple[McpRoute, RelaySession]] = attrs.field(factory=dict)
    # The route each session was made for: after a reload changed its route,
    # a session keeps being served with its own targets until it ends.
    _routes: weakref.WeakKeyDictionary[RelaySession, McpRoute] = attrs.field(
        factory=weakref.WeakKeyDictionary
    )
    _verified_tokens: OrderedDict[str, str] = attrs.field(factory=OrderedDict)
    _shared_lock: trio.Lock = attrs.field(factory=trio.Lock)
    _legacy: dict[
        str, tuple[RelaySession, trio.MemorySendChannel[tuple[Message, UpstreamHeaders]]]
    ] = attrs.field(factory=dict)
    # With --workers: this process's index and the number of workers.
    worker: int | None = None
    workers: int = 1
    is_draining: bool = False
    _waits: set[trio.CancelScope] = attrs.field(factory=set)  # of idle SSE streams

    def start_drain(self) -> None:
        """End every server-to-client stream now, between two events."""
        self.is_draining = True
        for wait in list(self._waits):
            wait.cancel()

    def _new_sid(self) -> str:
        sid = secrets.token_urlsafe(16)
        return sid if self.worker is None else sid + session_suffix(self.worker)

    def owner_of(self, req: ServerRequest, route: McpRoute) -> int | None:
        """The worker that must serve ``req``: the one holding the session it
        names. None when any worker can: it names no session, or it is a
        request (POST) in a session every worker can take up."""
        if self.worker is None:
            return None
        if req.method == "POST" and route.resumable and "sessionId=" not in req.query:
            return None
        token = header_value(req.headers, b"mcp-session-id")
        if token is not None:
            text = token.decode("latin-1")
            sid = self._verified_tokens.get(text)
            if sid is None:
                try:
                    sid = self.codec.decode(text).sid
                except InvalidSession:
                    return None
                self._remember_token(text, sid)
            return owner_of_sid(sid, self.workers)
        if req.method == "POST" and "sessionId=" in req.query:
            return owner_of_sid(_legacy_sid(req), self.workers)
        return None

    def _remember_token(self, token: str, sid: str) -> None:
        self._verified_tokens[token] = sid
        if len(self._verified_tokens) > TOKEN_CACHE_SIZE:
            self._verified_tokens.popitem(last=False)

    async def handle(
        self,
        req: ServerRequest,
        route: McpRoute,
        policies: RoutePolicies | None = None,
        view: RequestView | None = None,
    ) -> None:
        req.mcp_caller = Caller.of(req, policies, view)
        await self._handle(req, route)

    async def _handle(self, req: ServerRequest, route: McpRoute) -> None:
        if route.dns_rebinding_protection and not is_localhost_request(req.headers):
            req.record.error = "dns rebinding protection"
            await req.respond(
                403,
                "MCP DNS rebinding protection: Host/Origin must be localhost, 127.0.0.1 or [::1]\n",
            )
            return
        try:
            if is_websocket_upgrade(req.headers):
                await self._websocket(req, route)
            elif req.method == "POST" and "sessionId=" in req.query:
                await self._legacy_post(req, route)
            elif req.method == "POST":
                await self._post(req, route)
            elif req.method == "GET" and req.path.endswith("/sse"):
                await self._legacy_stream(req, route)
            elif req.method == "GET":
                await self._get(req, route)
            elif req.method == "DELETE":
                await self._delete(req, route)
            else:
                raise McpError(405, f"method {req.method} not allowed")
        except McpError as exc:
            req.record.error = exc.message
            body = json.dumps(jsonrpc.make_error(None, exc.code, exc.message)).encode()
            extra = [(b"allow", b"GET, POST, DELETE")] if exc.status == 405 else []
            await req.respond(exc.status, body, extra, content_type=JSON)

    def _upstream_headers(self, req: ServerRequest, route: McpRoute) -> UpstreamHeaders:
        caller: Caller = req.mcp_caller
        return caller.headers_for(route, caller.upstream_headers(_forward_headers(req.headers)))

    async def _read_message(self, req: ServerRequest) -> Message:
        ctype = (header_value(req.headers, b"content-type") or b"").lower()
        if not ctype.startswith(JSON):
            raise McpError(415, "Content-Type must be application/json")
        if (req.head.content_length or 0) > MAX_BODY:
            raise McpError(413, "message too large")
        return _parse_one(await req.read_body())

    async def _new_session(self, route: McpRoute, ttl: float | None = None) -> RelaySession:
        session = RelaySession(
            sid=self._new_sid(),
            targets=route.targets,
            tls=route.tls,
            pool=self.pool,
            ttl=ttl or self.ttl,
        )
        await self._start(session, route)
        return session

    async def _start(self, session: RelaySession, route: McpRoute) -> None:
        self._routes[session] = route
        try:
            await self.manager.start(session)
        except UpstreamError as exc:
            raise McpError(503, exc.reason, -32603) from exc

    # ------------------------------------------------------------ Streamable HTTP

    async def _post(self, req: ServerRequest, route: McpRoute) -> None:
        accept = (header_value(req.headers, b"accept") or b"").lower()
        if b"application/json" not in accept or b"text/event-stream" not in accept:
            raise McpError(406, "Accept must include application/json and text/event-stream")
        message = await self._read_message(req)
        method = message.get("method")
        req.record.extra["mcp.method"] = str(method or "response")
        headers = self._upstream_headers(req, route)

        token = header_value(req.headers, b"mcp-session-id")
        if token is None and (method == "server/discover" or _stateless_version(req, message)):
            await self._stateless_revision(req, route, message, headers)
            return
        if token is None:
            if method == "initialize":
                session = await self._new_session(route)
                answer = await self._initialize(session, route, message, headers)
                extra: Headers = []
                if "result" in answer:
                    token_text = self.codec.encode(
                        SessionState.new(
                            sid=session.sid,
                            targets={t: tr.session_id for t, tr in session.transports.items()},
                            protocol_version=str(session.protocol_version or ""),
                        )
                    )
                    extra = [(b"mcp-session-id", token_text.encode())]
                    req.record.extra["mcp.session"] = session.sid[:8]
                else:
                    session.close()
                await _respond_json(req, answer, extra)
                return
            if route.stateful:
                raise McpError(400, "Mcp-Session-Id header is required")
            await self._stateless(req, route, message, headers)
            return
        session = await self._find_session(token.decode("latin-1"), route)
        req.record.extra["mcp.session"] = session.sid[:8]
        route = self._routes.get(session, route)
        await self._post_to_session(req, route, session, message, headers)

    async def _post_to_session(
        self,
        req: ServerRequest,
        route: McpRoute,
        session: RelaySession,
        message: Message,
        headers: UpstreamHeaders,
    ) -> None:
        if "id" not in message or "method" not in message:
            await self._dispatch(route, session, message, headers, Outbox(), req.record.extra)
            await req.respond(202, b"")
            return
        outbox = PostOutbox(req, req.mcp_caller)

        async def work() -> None:
            await self._dispatch(route, session, message, headers, outbox, req.record.extra)

        await run_watching_client(req, work)

    # ------------------------------------------------------------ 2026-07-28

    async def _stateless_revision(
        self, req: ServerRequest, route: McpRoute, message: Message, headers: UpstreamHeaders
    ) -> None:
        """A request of the 2026-07-28 revision: no session; the upstreams,
        which may speak only older revisions, are reached through one shared
        session per route, and results are given the new shape."""
        method = str(message.get("method") or "")
        msg_id = message.get("id")
        version = _stateless_version(req, message)
        if method == "server/discover" and version != versions.STATELESS_REVISION:
            data = {"supported": [versions.STATELESS_REVISION], "requested": version}
            error = jsonrpc.make_error(msg_id, -32022, "unsupported protocol version", data)
            await _respond_json(req, error)
            return
        declared = header_value(req.headers, b"mcp-method")
        if declared is not None and declared.decode("latin-1") != method:
            raise McpError(400, "Mcp-Method header does not match the body", -32020)
        name = _call_name(message)
        named = header_value(req.headers, b"mcp-name")
        if named is not None and name is not None and named.isascii():
            text = named.decode("ascii")
            if not text.startswith("=?") and text != name:
                raise McpError(400, "Mcp-Name header does not match the body", -32020)
        if method == "server/discover" and _wants_server_requests(message):
            # Server-to-client requests reach a 2026-07-28 client only as
            # input-required rounds, which agentgw does not relay yet: such a
            # client gets everything on the initialize handshake instead.
            error = jsonrpc.make_error(
                msg_id,
                -32601,
                "agentgw serves clients that take sampling, elicitation or roots requests"
                " on the initialize handshake",
            )
            await _respond_json(req, error)
            return
        if msg_id is None or method in versions.REMOVED_IN_STATELESS:
            error = jsonrpc.make_error(msg_id, -32601, f"method {method!r} is not in 2026-07-28")
            await _respond_json(req, error)
            return
        session = await self._shared_session(route, headers)
        if method == "server/discover":
            init = session.init_result or {}
            result: dict[str, Any] = {
                "supportedVersions": [versions.STATELESS_REVISION],
                "capabilities": init.get("capabilities", {}),
                "cacheScope": "private",
                "ttlMs": 0,
                "resultType": "complete",
            }
            if init.get("instructions"):
                result["instructions"] = init["instructions"]
            if isinstance(init.get("serverInfo"), dict):
                result["_meta"] = {versions.SERVER_INFO_META_KEY: init["serverInfo"]}
            await _respond_json(req, jsonrpc.make_result(msg_id, result))
            return
        params = message.get("params")
        if isinstance(params, dict):
            message = {**message, "params": versions.strip_protocol_meta(params)}
        outbox = StatelessRevisionOutbox(PostOutbox(req, req.mcp_caller), method)
        log = req.record.extra

        async def work() -> None:
            await self._dispatch(route, session, message, headers, outbox, log)

        await run_watching_client(req, work)

    async def _shared_session(self, route: McpRoute, headers: UpstreamHeaders) -> RelaySession:
        async with self._shared_lock:
            for key, (_, old) in list(self._shared.items()):
                if old.closed.is_set():
                    del self._shared[key]
            shared = self._shared.get(id(route))
            if shared is not None and shared[0] is route:
                return shared[1]
            session = RelaySession(
                sid=secrets.token_urlsafe(16),
                targets=route.targets,
                tls=route.tls,
                pool=self.pool,
                ttl=self.ttl,
                is_shared=True,
            )
            await self._start(session, route)
            init = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": versions.INITIALIZE_VERSIONS[-1],
                    "capabilities": {},
                    "clientInfo": {"name": "agentgw", "version": __version__},
                },
            }
            answer = await self._initialize(session, route, init, headers)
            if "result" not in answer:
                session.close()
                raise McpError(502, str(answer["error"]["message"]), -32603)
            session.init_result = answer["result"]
            for target in list(session.transports):
                await session.notify(
                    target, {"jsonrpc": "2.0", "method": "notifications/initialized"}
                )
            self._shared[id(route)] = (route, session)
            return session

    async def _find_session(self, token: str, route: McpRoute) -> RelaySession:
        # Tokens that decoded once are remembered (bounded), so steady traffic
        # does not pay for AES-GCM on every request; forged ones never are.
        sid = self._verified_tokens.get(token)
        if sid is not None:
            session = self.manager.sessions.get(sid)
            if session is not None and not session.closed.is_set():
                self._verified_tokens.move_to_end(token)
                return session
        try:
            state = self.codec.decode(token)
        except InvalidSession as exc:
            raise McpError(404, "session not found", -32001) from exc
        self._remember_token(token, state.sid)
        session = self.manager.sessions.get(state.sid)
        if session is not None and not session.closed.is_set():
            return session
        # Resume a session issued by this or another replica with the same key.
        if set(state.targets) != set(route.target_names) or not route.resumable:
            raise McpError(404, "session not found", -32001)
        # A sibling worker's session, taken up here for requests only: its
        # owner keeps the server-to-client stream and ends the session.
        owner = owner_of_sid(state.sid, self.workers) if self.worker is not None else None
        session = RelaySession(
            sid=state.sid,
            targets=route.targets,
            tls=route.tls,
            pool=self.pool,
            ttl=self.ttl,
            upstream_sessions=dict(state.targets),
            protocol_version=state.protocol_version or None,
            is_replica=owner is not None and owner != self.worker,
        )
        await self._start(session, route)
        return session

    async def _stateless(
        self, req: ServerRequest, route: McpRoute, message: Message, headers: UpstreamHeaders
    ) -> None:
        session = await self._new_session(route, ttl=60)
        try:
            init = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "agentgw", "version": "stateless"},
                },
            }
            await self._initialize(session, route, init, headers)
            await self._post_to_session(req, route, session, message, headers)
        finally:
            session.close()

    async def _get(self, req: ServerRequest, route: McpRoute) -> None:
        accept = (header_value(req.headers, b"accept") or b"").lower()
        if b"text/event-stream" not in accept:
            raise McpError(406, "Accept must include text/event-stream")
        token = header_value(req.headers, b"mcp-session-id")
        if token is None:
            raise McpError(400, "Mcp-Session-Id header is required")
        session = await self._find_session(token.decode("latin-1"), route)
        async with session.get_stream() as messages:
            await self._serve_sse(req, messages)

    async def _serve_sse(
        self,
        req: ServerRequest,
        messages: trio.MemoryReceiveChannel[Message],
        first: bytes = b"",
    ) -> None:
        await req.send_head(
            200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        )
        if first:
            await req.send_data(first)

        async def pump() -> None:
            # A drain cancels the wait (never a write), and the stream ends
            # cleanly at once: the client reconnects elsewhere.
            while not self.is_draining:
                message = None
                with trio.move_on_after(self.keepalive) as wait:
                    self._waits.add(wait)
                    try:
                        message = await messages.receive()
                    except trio.EndOfChannel:
                        return
                    finally:
                        self._waits.discard(wait)
                if message is not None:
                    await req.send_data(encode_event(json.dumps(message)))
                elif not self.is_draining:
                    await req.send_data(encode_comment("ping"))

        await run_watching_client(req, pump)
        await req.end()

    async def _delete(self, req: ServerRequest, route: McpRoute) -> None:
        token = header_value(req.headers, b"mcp-session-id")
        if token is None:
            raise McpError(400, "Mcp-Session-Id header is required")
        session = await self._find_session(token.decode("latin-1"), route)
        session.close()
        await req.respond(200, b"")

    # ------------------------------------------------------------ legacy HTTP+SSE

    async def _legacy_stream(self, req: ServerRequest, route: McpRoute) -> None:
        """GET .../sse: the session lives as long as this stream. POSTs to the
        endpoint it announces hand their messages to this stream's nursery."""
        caller = req.mcp_caller
        session = await self._new_session(route)
        send, receive = trio.open_memory_channel[Message](CHANNEL_SIZE)
        work_send, work_receive = trio.open_memory_channel[tuple[Message, UpstreamHeaders]](
            CHANNEL_SIZE
        )
        self._legacy[session.sid] = (session, work_send)
        endpoint = f"{req.path}?sessionId={session.sid}"
        req.record.extra["mcp.session"] = session.sid[:8]
        gone = False
        try:
            async with session.get_stream() as server_messages, trio.open_nursery() as nursery:

                async def forward_server_messages() -> None:
                    async for message in server_messages:
                        await send.send(message)

                async def run_work() -> None:
                    async for message, headers in work_receive:
                        outbox = ChannelOutbox(send, caller)
                        nursery.start_soon(
                            self._dispatch, route, session, message, headers, outbox, {}
                        )

                nursery.start_soon(forward_server_messages)
                nursery.start_soon(run_work)
                first = encode_event(endpoint, event="endpoint")
                try:
                    await self._serve_sse(req, receive, first)
                except ClientGone:  # re-raised outside the nursery, unwrapped
                    gone = True
                nursery.cancel_scope.cancel()
        finally:
            self._legacy.pop(session.sid, None)
            session.close()
        if gone:
            raise ClientGone("client disconnected")

    async def _legacy_post(self, req: ServerRequest, route: McpRoute) -> None:
        sid = _legacy_sid(req)
        found = self._legacy.get(sid)
        if found is None:
            raise McpError(404, "session not found", -32001)
        _, work = found
        message = await self._read_message(req)
        req.record.extra["mcp.method"] = str(message.get("method") or "response")
        req.record.extra["mcp.session"] = sid[:8]
        try:
            work.send_nowait((message, self._upstream_headers(req, route)))
        except trio.WouldBlock:
            raise McpError(503, "too many messages in flight", -32603) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise McpError(404, "session not found", -32001) from None
        await req.respond(202, b"Accepted")

    # ------------------------------------------------------------ WebSocket

    async def _websocket(self, req: ServerRequest, route: McpRoute) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        ws.initiate_upgrade_connection(req.headers, req.target)
        request = next(iter(ws.events()), None)
        if not isinstance(request, WsRequest):
            raise McpError(400, "bad WebSocket upgrade")
        subprotocol = "mcp" if "mcp" in request.subprotocols else None
        accept = ws.send(AcceptConnection(subprotocol=subprotocol))
        req.record.status = 101
        stream, extra = req.take_stream()
        await stream.send_all(accept)
        session = await self._new_session(route)
        send, receive = trio.open_memory_channel[Message](CHANNEL_SIZE)
        headers = self._upstream_headers(req, route)
        try:
            async with session.get_stream() as server_messages, trio.open_nursery() as nursery:

                async def writer() -> None:
                    try:
                        async for message in receive:
                            await stream.send_all(ws.send(TextMessage(json.dumps(message))))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        nursery.cancel_scope.cancel()

                async def forward_server_messages() -> None:
                    async for message in server_messages:
                        await send.send(message)

                nursery.start_soon(writer)
                nursery.start_soon(forward_server_messages)
                try:
                    await self._websocket_reader(
                        ws, stream, extra, route, session, headers, send, nursery, req.mcp_caller
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            session.close()

    async def _websocket_reader(
        self,
        ws: WSConnection,
        stream: trio.abc.Stream,
        data: bytes,
        route: McpRoute,
        session: RelaySession,
        headers: UpstreamHeaders,
        send: trio.MemorySendChannel[Message],
        nursery: trio.Nursery,
        caller: Caller,
    ) -> None:
        parts: list[str] = []
        size = 0
        while True:
            if data:
                ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    parts.append(event.data)
                    size += len(event.data)
                    if size > MAX_BODY:
                        await stream.send_all(ws.send(CloseConnection(code=1009)))
                        return
                    if event.message_finished:
                        text, parts, size = "".join(parts), [], 0
                        try:
                            message = _parse_one(text.encode())
                        except McpError as exc:
                            await send.send(jsonrpc.make_error(None, exc.code, exc.message))
                            continue
                        outbox = ChannelOutbox(send, caller)
                        nursery.start_soon(
                            self._dispatch, route, session, message, headers, outbox, {}
                        )
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(ws.send(event.response()))
                    return
            data = bytes(await stream.receive_some(65536))
            if not data:
                return

    # ------------------------------------------------------------ one message

    async def _initialize(
        self, session: RelaySession, route: McpRoute, message: Message, headers: UpstreamHeaders
    ) -> Message:
        results, errors = await _fan_out(
            session, dict.fromkeys(route.target_names, message), headers
        )
        if errors and (not route.fail_open or not results):
            text = "; ".join(f"target {t}: {e}" for t, e in errors.items())
            return jsonrpc.make_error(message.get("id"), -32603, text)
        client_version = (message.get("params") or {}).get("protocolVersion")
        merged = merge.merge_initialize(results, client_version=client_version)
        session.protocol_version = merged.get("protocolVersion")
        return jsonrpc.make_result(message["id"], merged)

    async def _dispatch(
        self,
        route: McpRoute,
        session: RelaySession,
        message: Message,
        headers: UpstreamHeaders,
        outbox: Outbox,
        log: dict[str, str],
    ) -> None:
        """Handle one client message; answers go to ``outbox``."""
        method = message.get("method")
        if method is None:  # the client's answer to a server-to-client request
            await session.answer(message, headers)
            return
        if "id" not in message:
            await self._notification(session, message, headers)
            return
        msg_id: str | int = message["id"]
        try:
            if method == "initialize":
                if session.protocol_version is not None:
                    raise ValueError("session already initialized")
                answer = await self._initialize(session, route, message, headers)
                await outbox.send(answer, final=True)
            elif method == "ping":
                await outbox.send(jsonrpc.make_result(msg_id, {}), final=True)
            elif method in LIST_METHODS:
                answer = await self._list(route, session, message, headers, outbox.caller)
                await outbox.send(answer, final=True)
            elif method == "logging/setLevel":
                await _fan_out(session, dict.fromkeys(session.transports, message), headers)
                await outbox.send(jsonrpc.make_result(msg_id, {}), final=True)
            else:
                target, rewritten = _route_call(route, message)
                log["mcp.target"] = target
                if method in _CALL_KINDS:
                    kind, label = _CALL_KINDS[method]
                    upstream_name = _call_name(rewritten) or ""
                    if not outbox.caller.allows(method, kind, upstream_name, target):
                        # Indistinguishable from a name that does not exist.
                        log["error"] = "denied by mcpAuthorization"
                        text = f"{label}: {_call_name(message)}"
                        await outbox.send(jsonrpc.make_error(msg_id, -32602, text), final=True)
                        return
                name = _call_name(message)
                if name is not None:
                    field = "mcp.resource" if "uri" in (message.get("params") or {}) else "mcp.tool"
                    log[field] = name
                if route.rate_limits is not None:
                    limits = route.rate_limits
                    limited = _rate_limited(limits, outbox.caller, method, target, rewritten)
                    if limited is not None:
                        log["error"] = "rate limited"
                        await outbox.send(limited.error().rpc_error(msg_id), final=True)
                        return
                await self._forward(route, session, target, rewritten, headers, outbox)
        except ValueError as exc:
            await outbox.send(jsonrpc.make_error(msg_id, -32602, str(exc)), final=True)
        except UpstreamError as exc:
            log["error"] = exc.reason
            await outbox.send(jsonrpc.make_error(msg_id, -32603, exc.reason), final=True)

    async def _notification(
        self, session: RelaySession, message: Message, headers: UpstreamHeaders
    ) -> None:
        method = message.get("method")
        params = message.get("params") or {}
        if method == "notifications/cancelled" and isinstance(params, dict):
            found = session.upstream_id_for(params.get("requestId"))
            if found is not None:
                target, upstream_id = found
                await session.notify(
                    target, {**message, "params": {**params, "requestId": upstream_id}}, headers
                )
            return
        for target in list(session.transports):
            try:
                await session.notify(target, message, headers)
            except UpstreamError as exc:
                logger.info("notification to %s failed: %s", target, exc.reason)

    async def _list(
        self,
        route: McpRoute,
        session: RelaySession,
        message: Message,
        headers: UpstreamHeaders,
        caller: Caller = NOBODY,
    ) -> Message:
        method = str(message["method"])
        params = message.get("params") or {}
        cursor = params.get("cursor") if isinstance(params, dict) else None
        try:
            state = merge.targets_to_query(cursor or None, route.target_names)
        except ValueError:
            return jsonrpc.make_error(message["id"], -32602, "invalid cursor")
        base = (
            {k: v for k, v in params.items() if k != "cursor"} if isinstance(params, dict) else {}
        )
        messages = {
            target: {**message, "params": {**base, "cursor": cursor} if cursor else base}
            for target, cursor in state.items()
        }
        pages, errors = await _fan_out(session, messages, headers)
        rules = caller.rules
        if rules is not None:  # mcpAuthorization: each item judged on its own
            key, kind = _LIST_KINDS[method]
            base = caller.variables()
            for target, page in pages.items():
                items = page.get(key)
                if isinstance(items, list):
                    kept = authz.filter_list(rules, base, method, items, kind, target)
                    pages[target] = {**page, key: kept}
        try:
            prefix = route.prefix_uris if method.startswith("resources/") else route.prefix
            result = merge.merge_list(
                method,
                pages,
                prefix,
                errors=errors,
                failure_mode="failOpen" if route.fail_open else "failClosed",
            )
        except merge.MergeError as exc:
            return jsonrpc.make_error(message["id"], -32603, str(exc))
        return jsonrpc.make_result(message["id"], result)

    async def _forward(
        self,
        route: McpRoute,
        session: RelaySession,
        target: str,
        message: Message,
        headers: UpstreamHeaders,
        outbox: Outbox,
    ) -> None:
        """Forward one request; everything that belongs to it goes to
        ``outbox``, its response last."""
        method = str(message.get("method"))
        async with session.request(target, message, headers) as messages:
            while True:
                try:
                    # A JSON answer is already here: no timer, no wait.
                    reply = messages.receive_nowait()
                except trio.WouldBlock:
                    with trio.move_on_after(self.keepalive) as idle:
                        try:
                            reply = await messages.receive()
                        except trio.EndOfChannel:
                            raise UpstreamError(f"target {target}: no response") from None
                    if idle.cancelled_caught:
                        await outbox.ping()
                        continue
                except trio.EndOfChannel:
                    raise UpstreamError(f"target {target}: no response") from None
                final = "method" not in reply
                await outbox.send(_outbound(route, target, reply, method), final=final)
                if final:
                    return


def _is_localhost(host: str) -> bool:
    host = host.lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in ("localhost", "127.0.0.1", "::1")


def is_localhost_request(headers: Headers) -> bool:
    """The MCP spec's DNS-rebinding rule for localhost servers: Host must be
    a loopback name, and Origin, if sent (once), a loopback http(s) origin."""
    hosts = [v for n, v in headers if n == b"host"]
    if len(hosts) != 1 or not _is_localhost(hosts[0].decode("latin-1").strip()):
        return False
    origins = [v for n, v in headers if n == b"origin"]
    if not origins:
        return True
    if len(origins) > 1:
        return False
    origin = urllib.parse.urlsplit(origins[0].decode("latin-1").strip())
    return (
        origin.scheme in ("http", "https")
        and origin.username is None
        and origin.path in ("", "/")
        and not origin.query
        and not origin.fragment
        and _is_localhost(origin.netloc)
    )


def _wants_server_requests(message: Message) -> bool:
    """Whether a 2026-07-28 client declared it takes server-to-client requests."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    caps = meta.get(versions.META_PREFIX + "clientCapabilities") if isinstance(meta, dict) else None
    return isinstance(caps, dict) and any(k in caps for k in ("sampling", "elicitation", "roots"))


def _stateless_version(req: ServerRequest, message: Message) -> str | None:
    """The 2026-07-28 (or later) revision a request declares, else None."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(versions.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    if not isinstance(version, str):
        header = header_value(req.headers, b"mcp-protocol-version")
        version = header.decode("latin-1") if header is not None else None
    if version is not None and versions.is_stateless_revision(version):
        return version
    return None


def _legacy_sid(req: ServerRequest) -> str:
    query = dict(part.split("=", 1) for part in req.query.split("&") if "=" in part)
    return query.get("sessionId", "")


def _parse_one(body: bytes) -> Message:
    try:
        messages, batch = jsonrpc.parse_messages(body)
    except jsonrpc.JsonRpcError as exc:
        raise McpError(400, exc.message, exc.code) from exc
    if batch or len(messages) != 1:
        raise McpError(400, "batched messages are not supported")
    return messages[0]


# ---------------------------------------------------------------- helpers


async def _respond_json(req: ServerRequest, message: Message, headers: Headers = ()) -> None:
    await req.respond(200, json.dumps(message).encode(), list(headers), content_type=JSON)


def _forward_headers(headers: Headers) -> Headers:
    """The client's headers for HTTP upstreams: all but hop-by-hop, framing,
    Host and the session id (each upstream has its own)."""
    return [(n, v) for n, v in strip_hop_by_hop(headers) if n not in _DROP_HEADERS]


async def _fan_out(
    session: RelaySession, messages: dict[str, Message], headers: UpstreamHeaders
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Send each target its message at once; collect results and errors."""
    results: dict[str, dict[str, Any]] = {}
    errors = {t: session.dead[t] for t in messages if t in session.dead}

    async def one(target: str, message: Message) -> None:
        try:
            reply = await session.call(target, message, headers)
        except UpstreamError as exc:
            errors[target] = exc.reason
            return
        if "error" in reply:
            errors[target] = str(reply["error"].get("message"))
        else:
            results[target] = reply.get("result") or {}

    async with trio.open_nursery() as nursery:
        for target, message in messages.items():
            if target in session.transports:
                nursery.start_soon(one, target, message)
            elif target not in errors:
                errors[target] = "not connected"
    return results, errors


def _rate_limited(
    limits: McpRateLimits, caller: Caller, method: str, target: str, message: Message
) -> Limited | None:
    tool = _call_name(message) if method == "tools/call" else None
    variables = caller.variables() if caller.view is not None else {}
    if tool is not None:
        variables = authz.mcp_variables(
            variables, method=method, kind="tool", name=tool, target=target
        )
    return limits.check(method=method, target=target, tool=tool, variables=variables)


def _call_name(message: Message) -> str | None:
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    for key in ("name", "uri"):
        if isinstance(params.get(key), str):
            return str(params[key])
    ref = params.get("ref")
    if isinstance(ref, dict):
        value = ref.get("name") or ref.get("uri")
        return str(value) if value else None
    return None


def _route_call(route: McpRoute, message: Message) -> tuple[str, Message]:
    """Find the target of a call and strip its prefix from the name."""
    names_ = route.target_names
    params = message.get("params")
    params = dict(params) if isinstance(params, dict) else {}
    method = message.get("method")
    if method in ("tools/call", "prompts/get"):
        split = names.split_name(str(params.get("name", "")), names_, route.prefix)
        if split is None:
            raise ValueError(f"unknown name {params.get('name')!r}")
        target, params["name"] = split
    elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        split = names.split_uri(str(params.get("uri", "")), names_, route.prefix_uris)
        if split is None:
            raise ValueError(f"unknown resource {params.get('uri')!r}")
        target, params["uri"] = split
    elif method == "completion/complete":
        ref = dict(params.get("ref") or {})
        if "name" in ref:
            split = names.split_name(str(ref["name"]), names_, route.prefix)
            key = "name"
        else:
            split = names.split_uri(str(ref.get("uri", "")), names_, route.prefix_uris)
            key = "uri"
        if split is None:
            raise ValueError("unknown completion reference")
        target, ref[key] = split
        params["ref"] = ref
    elif len(names_) == 1:
        target = names_[0]
    else:
        raise ValueError(f"method {method!r} cannot be routed to one target")
    return target, {**message, "params": params}


def _outbound(route: McpRoute, target: str, message: Message, method: str) -> Message:
    """Prefix what an upstream says about its resources, when prefixing."""
    if not route.prefix_uris:
        return message
    if message.get("method") == "notifications/resources/updated":
        params = dict(message.get("params") or {})
        if isinstance(params.get("uri"), str):
            params["uri"] = names.prefix_uri(target, params["uri"])
        return {**message, "params": params}
    if method == "resources/read" and isinstance(message.get("result"), dict):
        result = dict(message["result"])
        contents = result.get("contents")
        if isinstance(contents, list):
            result["contents"] = [
                {**c, "uri": names.prefix_uri(target, c["uri"])}
                if isinstance(c, dict) and isinstance(c.get("uri"), str)
                else c
                for c in contents
            ]
        return {**message, "result": result}
    return message
