"""Remote JWKS: fetched through the gateway's own upstream pool, refreshed.

How this works: one task per JWKS URL runs in the gateway's root nursery.
It fetches at start-up and then again after the document's
``Cache-Control: max-age`` (15 minutes without one, never sooner than 60 s),
and retries a failed fetch after 10 s, then less and less often. A token
whose key id is unknown asks for an early refresh (``request_refresh``); the
task honours it at most once a minute, so key rotation needs no restart.
Until the first fetch succeeds, the providers have no keys and requests that
need them fail closed (401); everything else keeps being served. A fetch that
fails (unreachable, not 200, not a JWKS, or a JWKS without one usable key,
such as one with only symmetric ``oct`` keys) changes nothing: the last good
keys stay in force and the fetch is retried.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

import attrs
import trio

from agentgw.errors import UpstreamError
from agentgw.policy.jwt import JwksError, KeySet, Verifier
from agentgw.upstream.client import simple_request
from agentgw.upstream.pool import ConnectionPool

if TYPE_CHECKING:
    from agentgw.observability.tracing import Tracing

logger = logging.getLogger(__name__)

DEFAULT_TTL = 900.0
MIN_INTERVAL = 60.0
MAX_TTL = 86400.0
RETRY_FIRST = 10.0
RETRY_MAX = 300.0
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)", re.IGNORECASE)


@attrs.define(eq=False)
class JwksSource:
    """One JWKS URL and the (verifier, issuer) pairs that use its keys."""

    url: str
    users: list[tuple[Verifier, str]] = attrs.field(factory=list)
    fetches: int = 0
    failures: int = 0
    last_fetch: float = -1e9
    last_early: float = -1e9
    has_keys: bool = False
    keys: KeySet | None = None  # the last good fetch's
    _early: trio.Event = attrs.field(factory=trio.Event)

    def __repr__(self) -> str:
        return f"<JwksSource {self.url} fetches={self.fetches} has_keys={self.has_keys}>"

    def request_refresh(self) -> None:
        self._early.set()

    async def serve(self, pool: ConnectionPool, tracing: Tracing | None = None) -> None:
        """Keep the keys fresh (each fetch a span when ``tracing``). Never returns."""
        failures = 0
        while True:
            try:
                span = tracing.background_call("jwks fetch", self.url) if tracing else nullcontext()
                with span:
                    keys, ttl = await fetch_jwks(pool, self.url)
            except (UpstreamError, JwksError) as exc:
                failures += 1
                self.failures += 1
                wait = min(RETRY_FIRST * 2 ** (failures - 1), RETRY_MAX)
                why = exc.log_text if isinstance(exc, UpstreamError) else str(exc)
                kept = "keeping the last good keys" if self.has_keys else "no keys yet"
                logger.warning("JWKS %s: %s (%s; retry in %.0fs)", self.url, why, kept, wait)
            else:
                failures = 0
                self.fetches += 1
                self.last_fetch = time.monotonic()
                self.has_keys = True
                self.keys = keys
                for verifier, issuer in self.users:
                    verifier.replace_keys(issuer, keys)
                wait = ttl
            self._early = trio.Event()
            if failures:
                await trio.sleep(wait)  # a failing provider is not asked sooner
                continue
            with trio.move_on_after(wait):
                await self._early.wait()
                # An unknown key id: refresh early, but at most once a minute.
                await trio.sleep(max(0.0, self.last_early + MIN_INTERVAL - time.monotonic()))
                self.last_early = time.monotonic()


def _ttl(cache_control: bytes | None) -> float:
    if cache_control is None:
        return DEFAULT_TTL
    match = _MAX_AGE.search(cache_control.decode("latin-1"))
    if match is None:
        return DEFAULT_TTL
    return min(max(float(match.group(1)), MIN_INTERVAL), MAX_TTL)


async def fetch_jwks(pool: ConnectionPool, url: str) -> tuple[KeySet, float]:
    """GET ``url``; the key set and how long it may be cached.

    Raises:
        UpstreamError: unreachable, not 200, too large.
        JwksError: not a JWKS, or not one usable key in it.
    """
    status, headers, body = await simple_request(
        pool, b"GET", url, [(b"accept", b"application/json")]
    )
    if status != 200:
        raise UpstreamError("upstream protocol error", detail=f"JWKS answered HTTP {status}")
    cache_control = next((v for n, v in headers if n == b"cache-control"), None)
    keys = KeySet.from_jwks(body)
    if not len(keys):
        reasons = "; ".join(k.reason for k in keys.skipped[:5]) or "the set is empty"
        raise JwksError(f"no usable key ({reasons})")
    return keys, _ttl(cache_control)
