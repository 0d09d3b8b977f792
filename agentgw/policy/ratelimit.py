"""Token buckets: agentgateway's ``localRateLimit`` and agentgw's MCP ``rateLimits`` (no I/O).

How this works. A ``Bucket`` starts full with ``max_tokens``. Refills are
discrete, as in agentgateway's limiter: every ``fill_interval`` after the
bucket was made, ``tokens_per_fill`` tokens come back (never above
``max_tokens``); a check first catches up on the refills that are due. A
request takes one token from every bucket of the policy, or from none: all
are checked before any is taken, so a request refused by one bucket costs the
others nothing. The time comes from an injected clock (monotonic seconds),
so tests step it by hand.

``RateLimiter`` is one ``localRateLimit`` policy (a list of buckets) on a
route or a listener. ``McpRateLimits`` is agentgw's extension on an MCP
backend: each limit matches calls to one target and/or one tool and keeps
one bucket per value of its CEL ``key`` (``jwt.sub``), in a bounded LRU map.
A key that does not evaluate (no token, a missing claim) falls into one
shared bucket, so callers without a key are limited together.

Buckets live in this process only: with ``--workers N`` or N replicas a
client gets up to N times the limit. Each limiter counts the requests it
refused (``limited``), read by the metrics at scrape time.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import attrs
import cel

from agentgw.config.model import McpRateLimit, RateLimit
from agentgw.errors import ConfigError, RateLimited
from agentgw.policy import authz

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

MAX_KEYS: Final = 10_000
"""Buckets kept per keyed MCP limit; the least recently used is dropped (and
starts full if its key comes back)."""

NO_KEY: Final = ""


@attrs.define(eq=False)
class Bucket:
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float
    available: int
    next_refill: float

    @classmethod
    def full(cls, spec: RateLimit | McpRateLimit, now: float) -> Bucket:
        return cls(
            spec.max_tokens,
            spec.tokens_per_fill,
            spec.fill_interval,
            spec.max_tokens,
            now + spec.fill_interval,
        )

    def refill(self, now: float) -> None:
        if now < self.next_refill:
            return
        intervals = int((now - self.next_refill) // self.fill_interval) + 1
        self.next_refill += intervals * self.fill_interval
        self.available = min(self.max_tokens, self.available + intervals * self.tokens_per_fill)

    def has_token(self, now: float) -> bool:
        self.refill(now)
        return self.available > 0

    def retry_after(self, now: float) -> float | None:
        """Seconds until a token comes back; None if none ever will."""
        if self.tokens_per_fill == 0:
            return None
        return max(0.0, self.next_refill - now)


@attrs.frozen
class Allowed:
    """Every bucket had a token. ``remaining`` is the fewest left in any of
    them, ``limit`` that bucket's size and ``reset`` the seconds until it refills."""

    limit: int
    remaining: int
    reset: float


@attrs.frozen
class Limited:
    """A bucket was empty. ``retry_after`` is in whole seconds (at least 1),
    None when the bucket never refills; ``path`` names the limit in the config."""

    limit: int
    retry_after: int | None
    path: str

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``Retry-After`` and agentgateway's ``x-ratelimit-*`` headers."""
        out = [
            (b"x-ratelimit-limit", b"%d" % self.limit),
            (b"x-ratelimit-remaining", b"0"),
        ]
        if self.retry_after is not None:
            out.append((b"x-ratelimit-reset", b"%d" % self.retry_after))
            out.append((b"retry-after", b"%d" % self.retry_after))
        return out

    def error(self) -> RateLimited:
        """The error an MCP call gets: JSON-RPC -32000 "rate limited", with
        ``data.retryAfter`` in seconds (null if the bucket never refills)."""
        return RateLimited(
            "rate limited",
            detail=f"over {self.path}",
            data={"retryAfter": self.retry_after},
            headers=self.headers(),
        )


def _limited(bucket: Bucket, now: float, path: str) -> Limited:
    wait = bucket.retry_after(now)
    return Limited(bucket.max_tokens, None if wait is None else max(1, math.ceil(wait)), path)


def _take(buckets: Sequence[Bucket], now: float) -> Allowed:
    """One token from every bucket; each has one (``has_token``)."""
    tightest = buckets[0]
    for bucket in buckets:
        bucket.available -= 1
        if bucket.available < tightest.available:
            tightest = bucket
    return Allowed(tightest.max_tokens, tightest.available, max(0.0, tightest.next_refill - now))


@attrs.define(eq=False)
class RateLimiter:
    """One ``localRateLimit`` policy: its buckets, shared by every request
    it applies to.

    Args:
        path: where the policy is in the config (for logs and metrics).
        specs: the policy's list.
        clock: monotonic seconds.
    """

    path: str
    specs: tuple[RateLimit, ...]
    clock: Clock = time.monotonic
    limited: int = 0
    buckets: tuple[Bucket, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        now = self.clock()
        self.buckets = tuple(Bucket.full(spec, now) for spec in self.specs)

    def __repr__(self) -> str:
        left = [b.available for b in self.buckets]
        return f"<RateLimiter {self.path} available={left} limited={self.limited}>"


def check_all(limiters: Sequence[RateLimiter]) -> Allowed | Limited | None:
    """One request against several policies (a listener's and a route's):
    a token from every bucket of every policy, or from none.

    Returns:
        None without buckets, else ``Allowed`` or the first ``Limited``
        (counted on the limiter that refused).
    """
    buckets: list[Bucket] = []
    for limiter in limiters:
        now = limiter.clock()
        for bucket in limiter.buckets:
            if not bucket.has_token(now):
                limiter.limited += 1
                return _limited(bucket, now, limiter.path)
        buckets.extend(limiter.buckets)
    if not buckets:
        return None
    return _take(buckets, limiters[0].clock())


# ---------------------------------------------------------------- MCP (agentgw extension)


@attrs.define(eq=False)
class McpLimit:
    """One entry of an MCP backend's ``rateLimits``."""

    path: str
    spec: McpRateLimit
    key: cel.Program | None = attrs.field(default=None, repr=False)
    limited: int = 0
    buckets: OrderedDict[str, Bucket] = attrs.field(factory=OrderedDict, repr=False)
    _warned: bool = attrs.field(default=False, repr=False)

    def matches(self, method: str, target: str, tool: str | None) -> bool:
        spec = self.spec
        if spec.target is not None and spec.target != target:
            return False
        if spec.tool is not None:
            return method == "tools/call" and tool == spec.tool
        return True

    def key_of(self, variables: Mapping[str, object]) -> str:
        if self.key is None:
            return NO_KEY
        try:
            ctx = cel.Context()
            for name in ("jwt", "request", "source", "mcp"):
                if name in variables:
                    ctx.add_variable(name, variables[name])
            value = self.key.execute(ctx)
        except Exception as exc:
            # The type only: messages quote the values (claims, headers).
            if not self._warned:
                self._warned = True
                logger.info(
                    "%s.key does not evaluate (%s): such calls share one bucket",
                    self.path,
                    type(exc).__name__,
                )
            return NO_KEY
        except BaseException as exc:
            if type(exc).__name__ != "PanicException":
                raise
            return NO_KEY
        if isinstance(value, str | int | float | bool):
            return str(value)
        return NO_KEY

    def bucket(self, key: str, now: float) -> Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket.full(self.spec, now)
            if len(self.buckets) > MAX_KEYS:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key)
        return bucket


@attrs.define(eq=False)
class McpRateLimits:
    """An MCP backend's ``rateLimits``, compiled (``compile_mcp_limits``)."""

    limits: tuple[McpLimit, ...]
    clock: Clock = time.monotonic

    def check(
        self,
        *,
        method: str,
        target: str,
        tool: str | None,
        variables: Mapping[str, object],
    ) -> Limited | None:
        """One call routed to ``target``: a token from every matching limit's
        bucket for this caller, or from none.

        Args:
            method: the JSON-RPC method (``tools/call``...).
            target: the target the call goes to.
            tool: for ``tools/call``, the tool's name on the target (without
                the gateway's prefix).
            variables: the CEL variables, as for ``mcpAuthorization``
                (``authz.http_variables``, optionally ``authz.mcp_variables``).

        Returns:
            None (go on) or the ``Limited`` to answer with; its ``error()`` is
            the JSON-RPC error to send.
        """
        now = self.clock()
        chosen: list[tuple[McpLimit, Bucket]] = []
        for limit in self.limits:
            if limit.matches(method, target, tool):
                bucket = limit.bucket(limit.key_of(variables), now)
                if not bucket.has_token(now):
                    limit.limited += 1
                    return _limited(bucket, now, limit.path)
                chosen.append((limit, bucket))
        for _, bucket in chosen:
            bucket.available -= 1
        return None


def compile_mcp_limits(
    specs: Sequence[McpRateLimit], *, path: str, clock: Clock = time.monotonic
) -> McpRateLimits | None:
    """Compile an MCP backend's ``rateLimits``; None when there are none.

    Raises:
        ConfigError: a ``key`` that is not valid CEL, as ``<path>[i].key: ...``.
    """
    if not specs:
        return None
    errors: list[str] = []
    limits = []
    for i, spec in enumerate(specs):
        where = f"{path}[{i}]"
        program = None
        if spec.key is not None:
            program = authz.compile_expression(spec.key, f"{where}.key", errors)
        limits.append(McpLimit(where, spec, program))
    if errors:
        raise ConfigError(errors)
    return McpRateLimits(tuple(limits), clock)
