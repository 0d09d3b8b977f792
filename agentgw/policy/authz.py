"""CEL authorization: agentgateway's ``authorization`` and ``mcpAuthorization`` rules.

How this works. ``compile_rules`` turns a ``rules`` list into a ``RuleSet``,
compiling every expression once at config time; an expression that does not
compile is a ``ConfigError``. ``RuleSet.evaluate`` decides as agentgateway's
``RuleSets::validate`` (``crates/agentgateway/src/http/authorization.rs``):

1. any ``deny`` rule true: deny;
2. any ``require`` rule not true: deny;
3. any ``allow`` rule true: allow;
4. allow rules exist and none was true: deny; otherwise (no rules, or only
   deny and require rules): allow.

A rule whose evaluation fails (a missing claim, a type error) or gives
something other than a bool counts as false, as agentgateway's
``Executor::eval_bool`` does: a failing deny does not deny, a failing require
denies, a failing allow does not allow. The first failure of each rule is
logged, with the expression and the kind of error but never the message,
because the CEL library's messages quote the values (claims, headers).

Converting Python values into CEL values costs far more than running a
compiled program (microseconds per string, against a fraction of one for a
simple comparison), so an evaluation converts only the top-level variables
its rules name, once, into one ``cel.Context`` that every rule reads.
``filter_list`` converts the request's variables once per list and only
``mcp`` per item.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, Literal, TypeVar

import attrs
import cel

from agentgw.errors import ConfigError
from agentgw.wire.tls import PeerCertificate

logger = logging.getLogger(__name__)

RuleKind = Literal["allow", "deny", "require"]
ResourceKind = Literal["tool", "prompt", "resource"]
DenyKind = Literal["deny", "require", "allow", "error"]
T = TypeVar("T")

RULE_KINDS: Final[tuple[RuleKind, ...]] = ("allow", "deny", "require")

# serde_json's default recursion limit, so agentgateway never sees claims
# nested deeper. The CEL library converts values recursively in Rust and
# crashes the process (SIGSEGV) on values nested some ten thousand deep.
MAX_CLAIM_DEPTH: Final = 128


# ---------------------------------------------------------------- decisions


@attrs.frozen
class Allow:
    """The rules allow the request."""


ALLOW: Final = Allow()


@attrs.frozen
class Deny:
    """The rules deny the request.

    Attributes:
        rule_index: the position in ``rules`` of the deny rule that held or
            the require rule that did not; ``None`` for ``allow`` and
            ``error``.
        kind: ``"deny"`` (a deny rule was true), ``"require"`` (a require
            rule was not true), ``"allow"`` (there are allow rules and none
            was true) or ``"error"`` (a variable the rules read cannot be
            given to CEL, see ``http_variables``).
    """

    rule_index: int | None
    kind: DenyKind

    @property
    def reason(self) -> str:
        """A short text for the access log."""
        if self.kind == "deny":
            return f"deny rule {self.rule_index} matched"
        if self.kind == "require":
            return f"require rule {self.rule_index} not met"
        if self.kind == "allow":
            return "no allow rule matched"
        return "request attributes cannot be evaluated"


Decision = Allow | Deny


# ---------------------------------------------------------------- rules


@attrs.frozen
class Rule:
    """One compiled rule. ``index`` is its position in the config's ``rules``."""

    index: int
    kind: RuleKind
    expression: str
    program: cel.Program = attrs.field(eq=False, repr=False)


class _Unrepresentable:
    def __repr__(self) -> str:
        return "<unrepresentable>"


# Stands in for claims that cannot be given to CEL; a rule set that reads them
# denies (kind "error") instead of letting every deny rule fail open.
UNREPRESENTABLE: Final = _Unrepresentable()


@attrs.define(eq=False)
class RuleSet:
    """Compiled rules of one ``authorization`` or ``mcpAuthorization`` policy.

    Build it with ``compile_rules``. It remembers which rules have already
    logged an evaluation failure, so it is a resource, not a value.
    """

    path: str
    rules: tuple[Rule, ...]
    _deny: tuple[Rule, ...] = attrs.field(init=False)
    _require: tuple[Rule, ...] = attrs.field(init=False)
    _allow: tuple[Rule, ...] = attrs.field(init=False)
    _names: frozenset[str] = attrs.field(init=False)
    _warned: set[int] = attrs.field(init=False, factory=set)
    _warned_variables: bool = attrs.field(init=False, default=False)
    denials: dict[str, int] = attrs.field(init=False, factory=dict)
    """Requests ``evaluate`` denied, by the rule that decided (``deny[2]``,
    ``require[0]``, ``allow`` when no allow rule held, ``error``); read by
    the metrics."""

    def __attrs_post_init__(self) -> None:
        self._deny = tuple(r for r in self.rules if r.kind == "deny")
        self._require = tuple(r for r in self.rules if r.kind == "require")
        self._allow = tuple(r for r in self.rules if r.kind == "allow")
        # Top-level names only (``jwt``, ``request``...). Comprehension
        # variables are listed too; they match no variable and cost nothing.
        self._names = frozenset(n for r in self.rules for n in r.program.variables())

    def __repr__(self) -> str:
        return f"<RuleSet {self.path} rules={len(self.rules)}>"

    def has_rules(self) -> bool:
        """Whether there is any rule; a rule set without rules allows everything."""
        return bool(self.rules)

    def has_variable(self, name: str) -> bool:
        """Whether some rule names the top-level variable ``name``."""
        return name in self._names

    def evaluate(self, variables: Mapping[str, object]) -> Decision:
        """Decide on one request.

        Args:
            variables: built by ``http_variables`` (and ``mcp_variables``).
                Only the top-level entries the rules name are read.

        Returns:
            ``ALLOW`` or a ``Deny`` saying which rule decided. Never raises
            for a failing rule: that rule counts as false.
        """
        if not self.rules:
            return ALLOW
        ctx = self._context(variables, skip=None)
        decision = Deny(None, "error") if ctx is None else self._decide(ctx)
        if isinstance(decision, Deny):
            index = decision.rule_index
            rule = decision.kind if index is None else f"{decision.kind}[{index}]"
            self.denials[rule] = self.denials.get(rule, 0) + 1
        return decision

    def filter(
        self,
        base_vars: Mapping[str, object],
        method: str,
        items: Iterable[T],
        kind: ResourceKind,
        target: str,
        *,
        name_of: Callable[[T], str | None] | None = None,
    ) -> list[T]:
        """See ``filter_list``."""
        if not self.rules:
            return list(items)
        ctx = self._context(base_vars, skip="mcp")
        if ctx is None:
            return []
        if "mcp" not in self._names:
            # The decision cannot depend on the item.
            return list(items) if isinstance(self._decide(ctx), Allow) else []
        get_name: Callable[[T], str | None] = name_of or _default_name(kind)
        kept: list[T] = []
        for item in items:
            name = get_name(item)
            if name is None:
                continue
            if not self._add(ctx, "mcp", _mcp_value(method, kind, name, target)):
                self._warn_variables("mcp")
                continue
            if isinstance(self._decide(ctx), Allow):
                kept.append(item)
        return kept

    def _context(self, variables: Mapping[str, object], skip: str | None) -> cel.Context | None:
        ctx = cel.Context()
        for name in self._names:
            if name == skip or name not in variables:
                continue
            value = variables[name]
            if value is UNREPRESENTABLE or not self._add(ctx, name, value):
                self._warn_variables(name)
                return None
        return ctx

    def _add(self, ctx: cel.Context, name: str, value: object) -> bool:
        try:
            ctx.add_variable(name, value)
        except Exception:
            return False
        except BaseException as exc:
            if not _is_rust_panic(exc):
                raise
            return False
        return True

    def _decide(self, ctx: cel.Context) -> Decision:
        for rule in self._deny:
            if self._is_true(rule, ctx):
                return Deny(rule.index, "deny")
        for rule in self._require:
            if not self._is_true(rule, ctx):
                return Deny(rule.index, "require")
        for rule in self._allow:
            if self._is_true(rule, ctx):
                return ALLOW
        return Deny(None, "allow") if self._allow else ALLOW

    def _is_true(self, rule: Rule, ctx: cel.Context) -> bool:
        try:
            result = rule.program.execute(ctx)
        except Exception as exc:
            # The type only: messages quote values (KeyError('<claim>'), ...).
            self._warn(rule, type(exc).__name__)
            return False
        except BaseException as exc:
            if not _is_rust_panic(exc):
                raise
            self._warn(rule, "panic in the CEL library")
            return False
        if result is True:
            return True
        if result is not False:
            self._warn(rule, f"the result is a {type(result).__name__}, not a bool")
        return False

    def _warn(self, rule: Rule, what: str) -> None:
        if rule.index in self._warned:
            return
        self._warned.add(rule.index)
        logger.warning(
            "%s[%d]: %s rule %r failed to evaluate (%s) and counts as false;"
            " later failures of this rule are not logged",
            self.path,
            rule.index,
            rule.kind,
            rule.expression,
            what,
        )

    def _warn_variables(self, name: str) -> None:
        if self._warned_variables:
            return
        self._warned_variables = True
        logger.warning(
            "%s: the variable %r cannot be given to CEL, so the request is denied;"
            " later occurrences are not logged",
            self.path,
            name,
        )


def _is_rust_panic(exc: BaseException) -> bool:
    # PyO3 turns a Rust panic into pyo3_runtime.PanicException, a
    # BaseException that no importable module names.
    t = type(exc)
    return t.__name__ == "PanicException" and t.__module__ == "pyo3_runtime"


def compile_rules(rules: object, *, path: str) -> RuleSet:
    """Compile the ``rules`` of an ``authorization`` or ``mcpAuthorization`` policy.

    Args:
        rules: the config's list; each item is a CEL string (an allow rule)
            or a mapping with exactly one of ``allow``, ``deny``, ``require``
            whose value is a CEL string.
        path: where the list sits in the config, for example
            ``binds[0].listeners[0].routes[0].policies.authorization.rules``.

    Returns:
        The compiled rule set; every expression is compiled once, here.

    Raises:
        ConfigError: listing every bad rule as ``<path>[i]: <problem>``; a
            CEL error shows the expression and the position the CEL library
            reports.
    """
    if isinstance(rules, str | bytes) or not isinstance(rules, Sequence):
        raise ConfigError([f"{path}: must be a list of rules"])
    errors: list[str] = []
    compiled: list[Rule] = []
    for index, item in enumerate(rules):
        where = f"{path}[{index}]"
        parsed = _parse_rule(item, where, errors)
        if parsed is None:
            continue
        kind, expression, where = parsed
        program = _compile(expression, where, errors)
        if program is not None:
            compiled.append(Rule(index, kind, expression, program))
    if errors:
        raise ConfigError(errors)
    return RuleSet(path, tuple(compiled))


def _parse_rule(item: object, where: str, errors: list[str]) -> tuple[RuleKind, str, str] | None:
    if isinstance(item, str):
        return "allow", item, where
    if not isinstance(item, Mapping):
        errors.append(
            f"{where}: must be a CEL string or a mapping with one of allow, deny, require"
        )
        return None
    unknown = [k for k in item if k not in RULE_KINDS]
    if unknown:
        errors.append(
            f"{where}: unknown key {', '.join(map(repr, unknown))}"
            " (a rule has one of allow, deny, require)"
        )
        return None
    kinds = [k for k in RULE_KINDS if k in item]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        errors.append(f"{where}: a rule has exactly one of allow, deny, require (found {found})")
        return None
    kind = kinds[0]
    expression = item[kind]
    if not isinstance(expression, str):
        errors.append(f"{where}.{kind}: must be a CEL string")
        return None
    return kind, expression, f"{where}.{kind}"


def compile_expression(expression: str, where: str, errors: list[str]) -> cel.Program | None:
    """Compile one CEL expression; on failure append ``<where>: <problem>``
    to ``errors`` and return None."""
    return _compile(expression, where, errors)


def _compile(expression: str, where: str, errors: list[str]) -> cel.Program | None:
    try:
        return cel.compile(expression)
    except Exception as exc:
        reason = str(exc)
    except BaseException as exc:
        if not _is_rust_panic(exc):
            raise
        reason = "the CEL library panicked"
    # "Failed to parse expression '<expr>': ERROR: <input>:1:6: Syntax error: ..."
    # followed by the line and a caret under the position.
    prefix = f"Failed to parse expression '{expression}': "
    if reason.startswith(prefix):
        reason = reason[len(prefix) :]
    reason = reason.replace("ERROR: <input>:", "")
    errors.append(f"{where}: invalid CEL expression {expression!r}: {reason}")
    return None


# ---------------------------------------------------------------- variables


def http_variables(
    method: str,
    path: str,
    host: str,
    headers: Iterable[tuple[bytes, bytes]],
    source_address: str,
    source_port: int,
    claims: Mapping[str, object] | None,
    peer: PeerCertificate | None = None,
) -> dict[str, object]:
    """The CEL variables of an HTTP request, named as agentgateway names them.

    Args:
        method: the request method, for ``request.method``.
        path: the request target; ``request.path`` is the part before ``?``
            and ``request.pathAndQuery`` the whole.
        host: the authority as the client sent it (port included if sent),
            for ``request.host``.
        headers: ``(name, value)`` pairs. ``request.headers`` maps each
            lowercase name to its value, several values joined with ``", "``.
            A header with a value that is not UTF-8 is left out, as
            agentgateway does.
        source_address: the client's IP address, for ``source.address``.
        source_port: the client's port, for ``source.port``.
        claims: the verified JWT claims, or ``None`` without a token. ``jwt``
            is then an empty map, so ``has(jwt.sub)`` is false rather than an
            error. Claims are copied into values CEL accepts: lone surrogates
            become U+FFFD and integers beyond 64 bits become doubles. Claims
            nested deeper than ``MAX_CLAIM_DEPTH`` or holding non-JSON values
            become ``UNREPRESENTABLE``, and a rule set that reads ``jwt``
            then denies.
        peer: the client certificate an HTTPS listener verified (mTLS), for
            ``source.subject``, ``source.issuer``, ``source.subjectCn``,
            ``source.subjectAltNames``, ``source.spiffeId`` and
            ``source.certificate``, absent without one (as agentgateway).

    Returns:
        ``{"request": ..., "source": ..., "jwt": ...}``.
    """
    target = _text(path)
    source: dict[str, object] = {"address": _text(source_address), "port": source_port}
    if peer is not None:
        source.update(peer.cel_fields())
    return {
        "request": {
            "method": _text(method),
            "path": target.partition("?")[0],
            "pathAndQuery": target,
            "host": _text(host),
            "headers": _header_map(headers),
        },
        "source": source,
        "jwt": _claims(claims),
    }


def mcp_variables(
    base: Mapping[str, object],
    *,
    method: str,
    kind: ResourceKind,
    name: str,
    target: str,
) -> dict[str, object]:
    """``base`` plus ``mcp``, for ``mcpAuthorization``.

    Args:
        base: from ``http_variables``.
        method: the JSON-RPC method, for ``mcp.methodName``.
        kind: ``"tool"``, ``"prompt"`` or ``"resource"``.
        name: the upstream name without the gateway's target prefix; for a
            resource, its upstream URI (or URI template).
        target: the name of the target that serves it.

    Returns:
        A new dict with ``mcp.methodName`` and ``mcp.<kind>.{name, target}``,
        as agentgateway's ``MCPInfo``/``ResourceId`` expose them.
    """
    return {**base, "mcp": _mcp_value(method, kind, name, target)}


def _mcp_value(method: str, kind: ResourceKind, name: str, target: str) -> dict[str, object]:
    return {"methodName": _text(method), kind: {"name": _text(name), "target": _text(target)}}


# CEL strings are UTF-8: a lone surrogate (JSON can escape one) makes the
# whole variable unconvertible.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _text(s: str) -> str:
    if s.isascii():
        return s
    try:
        s.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", s)
    return s


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    values: dict[str, list[str]] = {}
    bad: set[str] = set()
    for raw_name, raw_value in headers:
        try:
            name = raw_name.decode("ascii").lower()
        except UnicodeDecodeError:
            continue
        try:
            value = raw_value.decode()
        except UnicodeDecodeError:
            bad.add(name)
            continue
        values.setdefault(name, []).append(value)
    return {n: ", ".join(v) for n, v in values.items() if n not in bad}


class _CannotConvert(Exception):
    pass


def _claims(claims: Mapping[str, object] | None) -> object:
    if claims is None:
        return {}
    try:
        return _claim_value(claims, 0)
    except _CannotConvert:
        return UNREPRESENTABLE


def _claim_value(value: object, depth: int) -> object:
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        # CEL has int64 and uint64; the library turns larger integers into
        # doubles and fails on those beyond a double's range.
        if -(2**63) <= value < 2**64:
            return value
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if depth >= MAX_CLAIM_DEPTH:
        raise _CannotConvert
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _CannotConvert
            out[_text(k)] = _claim_value(v, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_claim_value(v, depth + 1) for v in value]
    raise _CannotConvert


# ---------------------------------------------------------------- lists


def _default_name(kind: ResourceKind) -> Callable[[object], str | None]:
    keys = ("uri", "uriTemplate") if kind == "resource" else ("name",)

    def name_of(item: object) -> str | None:
        if isinstance(item, Mapping):
            for key in keys:
                value = item.get(key)
                if isinstance(value, str):
                    return value
        return None

    return name_of


def filter_list(
    ruleset: RuleSet,
    base_vars: Mapping[str, object],
    method: str,
    items: Iterable[T],
    kind: ResourceKind,
    target: str,
    *,
    name_of: Callable[[T], str | None] | None = None,
) -> list[T]:
    """Keep the items of one target's list result that the rules allow.

    Each item is evaluated as ``mcp_variables(base_vars, method=method,
    kind=kind, name=<its name>, target=target)`` would describe it.

    Args:
        ruleset: the ``mcpAuthorization`` rules.
        base_vars: from ``http_variables``.
        method: the list method, such as ``"tools/list"``.
        items: the upstream's items, with upstream (unprefixed) names.
        kind: what the items are.
        target: the target that listed them.
        name_of: how to read an item's name; by default ``item["name"]``
            for tools and prompts and ``item["uri"]`` (or
            ``item["uriTemplate"]``) for resources. An item without a name
            is dropped when there are rules.

    Returns:
        The allowed items, in their order.
    """
    return ruleset.filter(base_vars, method, items, kind, target, name_of=name_of)
