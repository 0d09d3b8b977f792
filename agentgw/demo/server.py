"""The demo MCP server's protocol core: JSON-RPC messages in, effects out (no I/O).

How this works: one ``DemoSession`` is one MCP session. ``handle(message)``
takes one parsed JSON-RPC message from the client and says what the
transport must do:

- ``Answer``: send this response now (quick requests and every error);
- ``Start``: a request that is still running, with its first effect;
- ``Resume``: the client answered one of our requests; a call waits for it;
- ``Cancel``: the client cancelled a running call: stop it, send nothing;
- ``Listen``: a 2026-07-28 ``subscriptions/listen``: acknowledge it, then
  relay the hub's notifications until the client goes away;
- ``None``: nothing to do (other notifications, stray replies).

A running request is a ``Call`` around a program (``agentgw.demo.effects``).
The transport performs each effect and calls ``Call.advance`` for the next
one, until ``Done`` carries the response. So timing, concurrency and
cancellation live in the transports, and this module is synchronous.

A 2026-07-28 request has no session: ``handle_stateless`` checks its
``_meta`` envelope and runs it in a throwaway ``DemoSession`` built from it.
There a program's ``Input`` does not reach the transport: the call either
finds the answers in the retry (``inputResponses``, and the sealed
``requestState`` of earlier rounds) or ends with an ``input_required``
result. In a handshake-era session ``Input`` becomes one ``Ask`` per input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from agentgw.demo.content import (
    COUNTER_URI,
    TEMPLATE_COMPLETIONS,
    TEMPLATE_URI,
    finished,
    read_resource,
    tool_error,
)
from agentgw.demo.content import PROMPTS as PROMPTS
from agentgw.demo.content import RESOURCES as RESOURCES
from agentgw.demo.effects import Ask as Ask
from agentgw.demo.effects import BecomeTask as BecomeTask
from agentgw.demo.effects import Done as Done
from agentgw.demo.effects import Effect as Effect
from agentgw.demo.effects import Emit as Emit
from agentgw.demo.effects import Gather as Gather
from agentgw.demo.effects import HangUp as HangUp
from agentgw.demo.effects import Input as Input
from agentgw.demo.effects import InputRequest as InputRequest
from agentgw.demo.effects import Program as Program
from agentgw.demo.effects import RpcError as RpcError
from agentgw.demo.effects import Sleep as Sleep
from agentgw.demo.effects import Step as Step
from agentgw.demo.effects import Wait as Wait
from agentgw.demo.modern import (
    INPUT_CAPABILITY,
    INPUT_METHODS,
    LOG_LEVELS,
    SERVER_INFO,
    SERVER_NAME,
    Hub,
    SubscriptionFilter,
    acknowledgment,
    decorate,
    parse_envelope,
)
from agentgw.demo.modern import (
    METHODS as STATELESS_METHODS,
)
from agentgw.demo.tasks import EXTENSION as TASKS_EXTENSION
from agentgw.demo.tasks import TaskRecord
from agentgw.demo.tools import TOOLS as TOOLS
from agentgw.demo.tools import ProgressToken, check_arguments
from agentgw.demo.wire import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    REQUEST_TIMEOUT,
    STATELESS_VERSIONS,
    RequestId,
    classify,
    error_message,
    id_of,
    negotiate_version,
    notification,
    request,
    result_message,
)

logger = logging.getLogger(__name__)

# Names an input of a handshake-era server-to-client request; agentgw uses it
# as the input's key when it turns the request into an MRTR round.
INPUT_KEY_META = "io.agentgw/inputKey"

INSTRUCTIONS = (
    "A demo server: try the echo, add and slow tools, "
    "the greeting prompt and the demo://readme resource."
)


# ---------------------------------------------------------------- outcomes


@attrs.frozen
class Answer:
    message: JSON


@attrs.frozen
class Start:
    call: Call
    effect: Step


@attrs.frozen
class Resume:
    call: Call
    reply: JSON


@attrs.frozen
class Cancel:
    call: Call


@attrs.frozen
class Listen:
    """A ``subscriptions/listen`` request: the stream's first message is
    ``acknowledgment``; then the transport registers with the hub."""

    request_id: RequestId
    filter: SubscriptionFilter
    acknowledgment: JSON


@attrs.frozen
class StartTask:
    """A ``tools/call`` became a task: answer ``message`` (its
    ``CreateTaskResult``) now, then drive ``call`` from ``effect`` in the
    background, reporting to ``record`` (unless ``effect`` is already
    ``Done``: then the record holds the outcome)."""

    call: Call
    record: TaskRecord
    message: JSON
    effect: Effect


Outcome = Answer | Start | Resume | Cancel | Listen | StartTask | None


# ---------------------------------------------------------------- calls


@attrs.define(eq=False)
class _Gathering:
    """The inputs of one ``Input``, all asked at once: the key of each
    request still unanswered, by its id, and the replies so far."""

    asked: dict[RequestId, str]
    replies: dict[str, JSON] = attrs.field(factory=dict)


@attrs.define(eq=False)
class Call:
    """One running request. The transport drives it with ``advance``."""

    request_id: RequestId
    method: str
    _session: DemoSession = attrs.field(repr=False)
    _program: Program = attrs.field(repr=False)
    pending_ask: RequestId | None = None
    is_finished: bool = False
    is_cancelled: bool = False
    _queued: Effect | None = attrs.field(default=None, repr=False)
    _gathering: _Gathering | None = attrs.field(default=None, repr=False)
    # Set once the call runs as a task (tasks extension).
    record: TaskRecord | None = attrs.field(default=None, repr=False)
    _steps: int = attrs.field(default=0, repr=False)

    def start(self) -> Effect | BecomeTask:
        """The first effect, or ``BecomeTask`` when the program asks to run
        as a task and the client can (``DemoSession`` makes the task)."""
        return self._next(None, may_become_task=True)

    def advance(self, value: Any = None) -> Effect:
        """The next effect; ``value`` is the reply after an ``Ask`` or a
        ``Gather``."""
        effect = self._next(value, may_become_task=False)
        assert not isinstance(effect, BecomeTask)
        return effect

    def _next(self, value: Any, *, may_become_task: bool) -> Effect | BecomeTask:
        if self._queued is not None:
            effect, self._queued = self._queued, None
            return effect
        if self.is_finished:
            raise RuntimeError(f"{self!r} is finished")
        self.pending_ask = None
        if self._gathering is not None:
            gathering = self._gathering
            reply_id = value.get("id") if isinstance(value, dict) else None
            key = gathering.asked.pop(reply_id, None) if isinstance(reply_id, str | int) else None
            if key is not None:
                gathering.replies[key] = value
            if gathering.asked:
                self.pending_ask = next(iter(gathering.asked))
                return Wait(self._session.ask_timeout)
            self._gathering = None
            value = gathering.replies
        try:
            while True:
                step = self._program.send(value)
                value = None
                if isinstance(step, BecomeTask):
                    if may_become_task and self._steps == 0 and self._session.has_tasks:
                        return step
                    continue
                if not isinstance(step, Input):
                    self._steps += 1
                    return step
                if self.record is not None:
                    self._steps += 1
                    return Gather(step.requests)
                if not self._session.is_stateless:
                    return self._ask_all(step.requests)
                value = self._session.answers_for(step)
                if value is None:
                    result = self._session.input_required(self.method, step)
                    return self._finish(result_message(self.request_id, result))
        except StopIteration as stop:
            return self._finish(result_message(self.request_id, stop.value))
        except RpcError as exc:
            return self._finish(error_message(self.request_id, exc.code, exc.message, exc.data))
        except Exception:
            logger.exception("%s %r failed", self.method, self.request_id)
            return self._finish(error_message(self.request_id, INTERNAL_ERROR, "internal error"))

    def time_out(self) -> Effect:
        """The client did not answer our request in time: tell it we gave up
        (``notifications/cancelled``), then resume the program with an error."""
        ask_id = self.pending_ask
        assert ask_id is not None, "time_out() without a pending Ask"
        self._session.asks.pop(ask_id, None)
        reply = error_message(ask_id, REQUEST_TIMEOUT, "the client did not answer in time")
        self._queued = self.advance(reply)
        return Emit(
            notification("notifications/cancelled", {"requestId": ask_id, "reason": "timed out"})
        )

    def close(self) -> None:
        """Stop the program (cancelled, or the transport is going away):
        ``is_cancelled`` unless it had finished. Idempotent."""
        if self.pending_ask is not None:
            self._session.asks.pop(self.pending_ask, None)
            self.pending_ask = None
        if self._gathering is not None:
            for ask_id in self._gathering.asked:
                self._session.asks.pop(ask_id, None)
            self._gathering = None
        if not self.is_finished:
            self.is_finished = self.is_cancelled = True
            self._queued = None
            self._program.close()
        self._session.calls.pop(self.request_id, None)

    def _ask_all(self, wanted: tuple[InputRequest, ...]) -> Ask:
        asks = [self._session.ask_message(r.method, r.params, r.key) for r in wanted]
        self._gathering = _Gathering(
            {a.message["id"]: r.key for a, r in zip(asks, wanted, strict=True)}
        )
        for ask in asks:
            self._session.asks[ask.message["id"]] = self
        self.pending_ask = asks[0].message["id"]
        return attrs.evolve(asks[0], more=tuple(a.message for a in asks[1:]))

    def _finish(self, message: JSON) -> Done:
        self.is_finished = True
        self._session.calls.pop(self.request_id, None)
        if self._session.is_stateless and self.record is None and "result" in message:
            message = {**message, "result": decorate(self.method, message["result"])}
        return Done(message)


# ---------------------------------------------------------------- session


@attrs.define(eq=False)
class DemoSession:
    """One MCP session's state and its request handlers; for a 2026-07-28
    request, the throwaway context of that one request.

    Args:
        ask_timeout: how long a tool waits for the client to answer a
            server-to-client request (sampling, elicitation, roots).
        hub: the state shared by 2026-07-28 requests (None in a session).
    """

    ask_timeout: float = 300.0
    protocol_version: str | None = None
    client_info: JSON = attrs.field(factory=dict)
    client_capabilities: JSON = attrs.field(factory=dict)
    log_level: str | None = "debug"
    subscriptions: set[str] = attrs.field(factory=set)
    counter: int = 0
    calls: dict[RequestId, Call] = attrs.field(factory=dict)
    asks: dict[RequestId, Call] = attrs.field(factory=dict)
    hub: Hub | None = None
    # 2026-07-28 only: the answers the request brought (MRTR).
    target: str = ""
    answers: JSON = attrs.field(factory=dict)
    has_verified_state: bool = False
    _next_ask: int = 1

    def __repr__(self) -> str:
        return (
            f"<DemoSession {self.protocol_version or 'uninitialized'} "
            f"calls={len(self.calls)} asks={len(self.asks)}>"
        )

    @property
    def is_stateless(self) -> bool:
        return self.hub is not None

    def is_at_least(self, version: str) -> bool:
        return self.protocol_version is not None and self.protocol_version >= version

    def has_capability(self, name: str) -> bool:
        return isinstance(self.client_capabilities.get(name), dict)

    @property
    def has_tasks(self) -> bool:
        """Whether this 2026-07-28 request declared the tasks extension."""
        extensions = self.client_capabilities.get("extensions")
        return (
            self.is_stateless
            and isinstance(extensions, dict)
            and isinstance(extensions.get(TASKS_EXTENSION), dict)
        )

    def require_tasks(self) -> None:
        """Raises -32021 unless the request declared the tasks extension."""
        if not self.has_tasks:
            data: JSON = {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}
            raise RpcError(
                MISSING_CAPABILITY, f"the client did not declare {TASKS_EXTENSION}", data
            )

    def check_capability(self, name: str) -> bool:
        """Whether the client declared ``name``. For a 2026-07-28 request a
        missing one refuses the request (-32021) instead: a server must not
        go on without it."""
        if self.has_capability(name) or not self.is_stateless:
            return self.has_capability(name)
        data: JSON = {"requiredCapabilities": {name: {}}}
        raise RpcError(MISSING_CAPABILITY, f"the client did not declare {name}", data)

    def handle(self, message: object) -> Outcome:
        """Take one parsed message from the client; see the module docstring."""
        kind = classify(message)
        if kind == "invalid":
            return Answer(
                error_message(id_of(message), INVALID_REQUEST, "invalid JSON-RPC message")
            )
        assert isinstance(message, dict)
        if kind == "response":
            call = self.asks.pop(message["id"], None)
            if call is None:
                logger.debug("reply to unknown request %r", message["id"])
                return None
            return Resume(call, message)
        params = message.get("params", {})
        if not isinstance(params, dict):
            if kind == "notification":
                return None
            return Answer(error_message(message["id"], INVALID_PARAMS, "params must be an object"))
        if kind == "notification":
            return self._on_notification(message["method"], params)
        return self._on_request(message["id"], message["method"], params)

    # -- notifications

    def _on_notification(self, method: str, params: JSON) -> Outcome:
        if method == "notifications/cancelled":
            request_id = params.get("requestId")
            call = None
            if isinstance(request_id, str | int) and not isinstance(request_id, bool):
                call = self.calls.get(request_id)
            if call is not None and call.method != "initialize":
                call.close()
                return Cancel(call)
        return None

    # -- requests

    def _on_request(self, request_id: RequestId, method: str, params: JSON) -> Outcome:
        if request_id in self.calls:
            return Answer(error_message(request_id, INVALID_REQUEST, "request id already in use"))
        if self.is_stateless:
            handler = _METHODS.get(method) if method in STATELESS_METHODS else None
        else:
            handler = _METHODS.get(method) if method not in _STATELESS_ONLY else None
        if handler is None:
            return Answer(
                error_message(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")
            )
        if self.protocol_version is None and method not in ("initialize", "ping"):
            return Answer(error_message(request_id, INVALID_REQUEST, "initialize first"))
        try:
            if self.is_stateless and method == "subscriptions/listen":
                wanted = SubscriptionFilter.from_params(params)
                return Listen(request_id, wanted, acknowledgment(request_id, wanted))
            if self.is_stateless:
                self._take_answers(method, params)
            program = handler(self, params)
        except RpcError as exc:
            return Answer(error_message(request_id, exc.code, exc.message, exc.data))
        call = Call(request_id, method, self, program)
        self.calls[request_id] = call
        effect = call.start()
        if isinstance(effect, BecomeTask):
            return self._start_task(call)
        if isinstance(effect, Done):
            return Answer(effect.message)
        return Start(call, effect)

    def _start_task(self, call: Call) -> Outcome:
        assert self.hub is not None
        try:
            record = self.hub.tasks.create()
        except RpcError as exc:
            call.close()
            return Answer(error_message(call.request_id, exc.code, exc.message, exc.data))
        call.record = record
        self.calls.pop(call.request_id, None)  # the task outlives this request
        message = result_message(call.request_id, decorate("tools/call", record.created_result()))
        effect = call.advance()
        if isinstance(effect, Done):
            record.finish(effect.message)
        return StartTask(call, record, message, effect)

    # -- 2026-07-28: input_required results (MRTR)

    def _take_answers(self, method: str, params: JSON) -> None:
        """Gather the answers a retry brings: those sealed in its
        ``requestState`` by earlier rounds, then its ``inputResponses``."""
        responses = params.get("inputResponses")
        state = params.get("requestState")
        if method not in INPUT_METHODS:
            return
        name = params.get("uri") if method == "resources/read" else params.get("name")
        self.target = name if isinstance(name, str) else ""
        if responses is not None and not (
            isinstance(responses, dict) and all(isinstance(v, dict) for v in responses.values())
        ):
            raise RpcError(
                INVALID_PARAMS, "invalid params: inputResponses must map keys to results"
            )
        if state is not None and not isinstance(state, str):
            raise RpcError(INVALID_PARAMS, "invalid params: requestState must be a string")
        assert self.hub is not None
        if state is not None:
            self.answers = self.hub.sealer.open(state, method, self.target)
            self.has_verified_state = True
        self.answers = {**self.answers, **(responses or {})}

    def answers_for(self, wanted: Input) -> dict[str, JSON] | None:
        """Each input's reply when the request brought them all, else None."""
        if not all(r.key in self.answers for r in wanted.requests):
            return None
        return {r.key: {"result": self.answers[r.key]} for r in wanted.requests}

    def input_required(self, method: str, wanted: Input) -> JSON:
        """The result that asks the client for what is still missing, with
        the answers so far sealed in ``requestState``."""
        assert self.hub is not None
        missing = [r for r in wanted.requests if r.key not in self.answers]
        for r in missing:
            self.check_capability(INPUT_CAPABILITY[r.method])
        kept = {k: v for k, v in self.answers.items() if k not in {r.key for r in missing}}
        return {
            "resultType": "input_required",
            "inputRequests": {r.key: {"method": r.method, "params": r.params} for r in missing},
            "requestState": self.hub.sealer.seal(method, self.target, kept),
        }

    # -- helpers for programs

    def log(self, level: str, data: Any) -> Iterator[Emit]:
        """A ``notifications/message`` when ``level`` passes the client's
        filter (for a 2026-07-28 request: only when it asked for a level)."""
        if self.log_level is None:
            return
        if LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level):
            params = {"level": level, "logger": SERVER_NAME, "data": data}
            yield Emit(notification("notifications/message", params))

    def progress(
        self,
        token: ProgressToken | None,
        progress: float,
        total: float | None = None,
        message: str | None = None,
    ) -> Iterator[Emit]:
        """A ``notifications/progress`` when the request asked for progress."""
        if token is None:
            return
        params: JSON = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None and self.is_at_least("2025-03-26"):
            params["message"] = message
        yield Emit(notification("notifications/progress", params))

    def ask(self, key: str, method: str, params: JSON) -> Program:
        """Ask the client one thing; returns its reply (``result`` or ``error``)."""
        replies = yield Input((InputRequest(key, method, params),))
        reply: JSON = replies[key]
        return reply

    def ask_message(self, method: str, params: JSON, key: str | None = None) -> Ask:
        """A server-to-client request; ``key`` names the input in ``_meta``
        (a gateway that turns the request into an MRTR round keys it so)."""
        ask_id = f"s{self._next_ask}"
        self._next_ask += 1
        if key is not None:
            meta = params.get("_meta")
            params = {
                **params,
                "_meta": {**(meta if isinstance(meta, dict) else {}), INPUT_KEY_META: key},
            }
        return Ask(request(ask_id, method, params), self.ask_timeout)

    def list_changed(self, kind: str) -> Iterator[Emit]:
        """Tell the client the ``tools`` or ``prompts`` list changed: the
        session's stream, or the hub's listen streams (2026-07-28)."""
        if self.hub is None:
            yield Emit(notification(f"notifications/{kind}/list_changed"), is_related=False)
        elif kind == "tools":
            self.hub.tools_changed()
        else:
            self.hub.prompts_changed()

    def read_counter(self) -> int:
        return self.hub.counter if self.hub is not None else self.counter

    def bump_counter(self) -> int:
        if self.hub is None:
            self.counter += 1
            return self.counter
        self.hub.counter += 1
        self.hub.resource_updated(COUNTER_URI)
        return self.hub.counter


def handle_stateless(hub: Hub, message: JSON, header_version: str | None = None) -> Outcome:
    """Take one 2026-07-28 message (a request with the ``_meta`` envelope).

    Args:
        hub: the state shared by 2026-07-28 requests.
        message: the parsed message; notifications and replies are ignored.
        header_version: the MCP-Protocol-Version header over HTTP.
    """
    kind = classify(message)
    if kind in ("notification", "response"):
        return None
    if kind == "invalid":
        return Answer(error_message(id_of(message), INVALID_REQUEST, "invalid JSON-RPC message"))
    try:
        envelope = parse_envelope(message.get("params"), header_version)
    except RpcError as exc:
        return Answer(error_message(message["id"], exc.code, exc.message, exc.data))
    session = DemoSession(
        protocol_version=envelope.version,
        client_info=envelope.client_info or {},
        client_capabilities=envelope.capabilities,
        log_level=envelope.log_level,
        hub=hub,
    )
    return session.handle(message)


def _initialize(s: DemoSession, params: JSON) -> Program:
    if s.protocol_version is not None:
        raise RpcError(INVALID_REQUEST, "the session is already initialized")
    requested = params.get("protocolVersion")
    if not isinstance(requested, str):
        raise RpcError(INVALID_PARAMS, "protocolVersion must be a string")
    capabilities = params.get("capabilities", {})
    s.protocol_version = negotiate_version(requested)
    s.client_capabilities = capabilities if isinstance(capabilities, dict) else {}
    info = params.get("clientInfo")
    s.client_info = info if isinstance(info, dict) else {}
    server_info: JSON = dict(SERVER_INFO)
    if s.is_at_least("2025-06-18"):
        server_info["title"] = "agentgw demo server"
    return finished(
        {
            "protocolVersion": s.protocol_version,
            "capabilities": {
                "tools": {"listChanged": True},
                "resources": {"subscribe": True, "listChanged": False},
                "prompts": {"listChanged": True},
                "logging": {},
                "completions": {},
            },
            "serverInfo": server_info,
            "instructions": INSTRUCTIONS,
        }
    )


def _no_cursor(params: JSON) -> None:
    # Lists fit in one page: any cursor is one we did not issue.
    if "cursor" in params:
        raise RpcError(INVALID_PARAMS, "invalid cursor")


def _ping(s: DemoSession, params: JSON) -> Program:
    return finished({})


def _tools_list(s: DemoSession, params: JSON) -> Program:
    _no_cursor(params)
    return finished({"tools": [t.describe(s) for t in TOOLS.values()]})


def _tools_call(s: DemoSession, params: JSON) -> Program:
    name = params.get("name")
    tool = TOOLS.get(name) if isinstance(name, str) else None
    if tool is None:
        raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
    args = params.get("arguments", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RpcError(INVALID_PARAMS, "arguments must be an object")
    problem = check_arguments(tool.input_schema, args)
    if problem is not None:
        return finished(tool_error(f"invalid arguments for {tool.name}: {problem}"))
    meta = params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    if not isinstance(token, str | int) or isinstance(token, bool):
        token = None
    if tool.task_support == "required" and not s.has_tasks:
        if s.is_stateless:
            s.require_tasks()
        return finished(tool_error(f"{tool.name} runs only as a task (the tasks extension)"))
    program = tool.handler(s, args, token)
    if tool.task_support != "forbidden" and s.has_tasks and not tool.decides_task:
        return _as_task(program)
    return program


def _as_task(program: Program) -> Program:
    yield BecomeTask()
    return (yield from program)


def _task(s: DemoSession, params: JSON) -> TaskRecord:
    s.require_tasks()
    assert s.hub is not None
    return s.hub.tasks.get(params.get("taskId"))


def _tasks_get(s: DemoSession, params: JSON) -> Program:
    return finished(_task(s, params).describe())


def _tasks_update(s: DemoSession, params: JSON) -> Program:
    record = _task(s, params)
    responses = params.get("inputResponses")
    if not isinstance(responses, dict) or not all(isinstance(v, dict) for v in responses.values()):
        raise RpcError(INVALID_PARAMS, "invalid params: inputResponses must map keys to results")
    record.update(responses)
    return finished({})


def _tasks_cancel(s: DemoSession, params: JSON) -> Program:
    _task(s, params).cancel()
    return finished({})


def _resources_list(s: DemoSession, params: JSON) -> Program:
    _no_cursor(params)
    return finished({"resources": [r.describe(s) for r in RESOURCES.values()]})


def _templates_list(s: DemoSession, params: JSON) -> Program:
    _no_cursor(params)
    template: JSON = {
        "uriTemplate": TEMPLATE_URI,
        "name": "template",
        "description": "A resource template with parameter substitution",
        "mimeType": "application/json",
    }
    if s.is_at_least("2025-06-18"):
        template["title"] = "Resource Template"
    return finished({"resourceTemplates": [template]})


def _uri(params: JSON) -> str:
    uri = params.get("uri")
    if not isinstance(uri, str):
        raise RpcError(INVALID_PARAMS, "uri must be a string")
    return uri


def _resources_read(s: DemoSession, params: JSON) -> Program:
    return finished({"contents": [read_resource(s, _uri(params))]})


def _subscribe(s: DemoSession, params: JSON) -> Program:
    s.subscriptions.add(_uri(params))
    return finished({})


def _unsubscribe(s: DemoSession, params: JSON) -> Program:
    s.subscriptions.discard(_uri(params))
    return finished({})


def _prompts_list(s: DemoSession, params: JSON) -> Program:
    _no_cursor(params)
    return finished({"prompts": [p.describe(s) for p in PROMPTS.values()]})


def _prompts_get(s: DemoSession, params: JSON) -> Program:
    name = params.get("name")
    prompt = PROMPTS.get(name) if isinstance(name, str) else None
    if prompt is None:
        raise RpcError(INVALID_PARAMS, f"Unknown prompt: {name}")
    args = params.get("arguments") or {}
    if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
        raise RpcError(INVALID_PARAMS, "arguments must map names to strings")
    for arg, _, required in prompt.arguments:
        if required and arg not in args:
            raise RpcError(INVALID_PARAMS, f"missing argument: {arg}")
    return prompt.get(s, args)


def _complete(s: DemoSession, params: JSON) -> Program:
    ref = params.get("ref")
    argument = params.get("argument")
    if not isinstance(ref, dict) or not isinstance(argument, dict):
        raise RpcError(INVALID_PARAMS, "ref and argument are required")
    arg_name, value = argument.get("name"), argument.get("value", "")
    if not isinstance(arg_name, str) or not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, "argument needs a name and a value")
    if ref.get("type") == "ref/prompt":
        prompt = PROMPTS.get(ref.get("name", ""))
        if prompt is None:
            raise RpcError(INVALID_PARAMS, f"Unknown prompt: {ref.get('name')}")
        candidates = prompt.completions.get(arg_name, ())
    elif ref.get("type") == "ref/resource":
        if ref.get("uri") != TEMPLATE_URI:
            raise RpcError(INVALID_PARAMS, f"Unknown resource template: {ref.get('uri')}")
        candidates = TEMPLATE_COMPLETIONS.get(arg_name, ())
    else:
        raise RpcError(INVALID_PARAMS, f"Unknown reference type: {ref.get('type')}")
    values = [c for c in candidates if c.lower().startswith(value.lower())]
    return finished(
        {"completion": {"values": values[:100], "total": len(values), "hasMore": False}}
    )


def _set_level(s: DemoSession, params: JSON) -> Program:
    level = params.get("level")
    if level not in LOG_LEVELS:
        raise RpcError(INVALID_PARAMS, f"level must be one of {', '.join(LOG_LEVELS)}")
    s.log_level = level
    return finished({})


def _discover(s: DemoSession, params: JSON) -> Program:
    return finished(
        {
            "supportedVersions": list(STATELESS_VERSIONS),
            "capabilities": {
                "tools": {"listChanged": True},
                "resources": {"subscribe": True, "listChanged": False},
                "prompts": {"listChanged": True},
                "logging": {},
                "completions": {},
                "extensions": {TASKS_EXTENSION: {}},
            },
            "instructions": INSTRUCTIONS,
        }
    )


def _listen(s: DemoSession, params: JSON) -> Program:
    raise AssertionError("subscriptions/listen is answered by DemoSession._on_request")


_METHODS: dict[str, Callable[[DemoSession, JSON], Program]] = {
    "initialize": _initialize,
    "ping": _ping,
    "server/discover": _discover,
    "subscriptions/listen": _listen,
    "tasks/get": _tasks_get,
    "tasks/update": _tasks_update,
    "tasks/cancel": _tasks_cancel,
    "tools/list": _tools_list,
    "tools/call": _tools_call,
    "resources/list": _resources_list,
    "resources/templates/list": _templates_list,
    "resources/read": _resources_read,
    "resources/subscribe": _subscribe,
    "resources/unsubscribe": _unsubscribe,
    "prompts/list": _prompts_list,
    "prompts/get": _prompts_get,
    "completion/complete": _complete,
    "logging/setLevel": _set_level,
}
# Methods only a 2026-07-28 request reaches (a session's server/discover is
# the probe of a 2026-07-28 client, which falls back to initialize on -32601).
_STATELESS_ONLY = frozenset(
    {"server/discover", "subscriptions/listen", "tasks/get", "tasks/update", "tasks/cancel"}
)
