"""Route selection for one bind: listener by host, then route by request.

How this works (agentgateway's order, which follows the Gateway API):

* The listener whose ``hostname`` equals the request host wins, then the
  longest ``*.suffix`` wildcard that the host ends with, then the first
  listener without a hostname.
* Within it every (route, match) pair is filed under each of the route's
  hostnames (``Exact``, ``Wildcard`` for ``*.suffix``, or ``None`` when the
  route has none) and each file is sorted once, most specific first: exact
  path, then prefix, then regex; longer path or pattern first; a method
  match first; more header matches; more query matches; then config order.
* A request tries the exact host's file, then the wildcard files from the
  longest suffix to the shortest, then the ``None`` file, and takes the
  first pair that matches.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence

import attrs

from agentgw.config.model import Backend, Bind, Listener, PathMatch, Route, RouteMatch, ValueMatch

Headers = list[tuple[bytes, bytes]]
_Bucket = tuple[str, str]  # ("exact" | "wildcard" | "none", host or suffix)


@attrs.frozen
class Selected:
    """The outcome of ``Router.select``."""

    listener: Listener
    route: Route
    route_match: RouteMatch
    listener_name: str
    route_name: str


@attrs.frozen
class _Value:
    exact: str | None
    regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, v: ValueMatch) -> _Value:
        return cls(v.exact, re.compile(v.regex) if v.regex is not None else None)

    def matches(self, have: str) -> bool:
        if self.exact is not None:
            return have == self.exact
        return self.regex is not None and self.regex.fullmatch(have) is not None


@attrs.frozen
class _Entry:
    route: Route
    route_name: str
    match: RouteMatch
    regex: re.Pattern[str] | None
    headers: tuple[tuple[bytes, _Value], ...]
    query: tuple[tuple[str, _Value], ...]

    def matches(self, path: str, method: str, headers: Headers, query: dict[str, str]) -> bool:
        if not path_matches(self.match.path, path, self.regex):
            return False
        if self.match.method is not None and method != self.match.method:
            return False
        for name, value in self.headers:
            if not any(
                k.lower() == name and value.matches(v.decode("latin-1")) for k, v in headers
            ):
                return False
        for qname, value in self.query:
            have = query.get(qname)
            if have is None or not value.matches(have):
                return False
        return True


def _rank(match: RouteMatch) -> tuple[int, ...]:
    """Larger is more specific."""
    p = match.path
    if p.exact is not None:
        kind, length = 3, len(p.exact)
    elif p.path_prefix is not None:
        kind, length = 2, len(p.path_prefix)
    else:
        kind, length = 1, len(p.regex or "")
    return (kind, length, match.method is not None, len(match.headers), len(match.query))


def path_matches(match: PathMatch, path: str, regex: re.Pattern[str] | None = None) -> bool:
    """Whether ``path`` (no query) matches. ``pathPrefix`` is by whole
    segments and ignores trailing slashes: ``/foo`` matches ``/foo``,
    ``/foo/`` and ``/foo/bar`` but not ``/foobar``."""
    if match.exact is not None:
        return path == match.exact
    if match.path_prefix is not None:
        prefix = match.path_prefix.rstrip("/")
        rest = path.rstrip("/")
        return rest.startswith(prefix) and (len(rest) == len(prefix) or rest[len(prefix)] == "/")
    if match.regex is not None:
        return (regex or re.compile(match.regex)).fullmatch(path) is not None
    return False


def request_host(host: str) -> str:
    """The Host header without its port, lower-cased; ``[::1]:3000`` gives
    ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    name, sep, port = host.rpartition(":")
    if sep and ":" not in name and port.isdigit():
        return name
    return host


def _bucket(hostname: str) -> _Bucket:
    hostname = hostname.lower()
    if hostname.startswith("*."):
        return ("wildcard", hostname[2:])
    return ("exact", hostname)


def _host_buckets(host: str) -> list[_Bucket]:
    buckets: list[_Bucket] = [("exact", host)] if host else []
    buckets += [("wildcard", host[i + 1 :]) for i, c in enumerate(host) if c == "."]
    return [*buckets, ("none", "")]


@attrs.frozen
class _Listener:
    listener: Listener
    name: str
    hostname: str
    files: dict[_Bucket, tuple[_Entry, ...]]

    @classmethod
    def compile(cls, listener: Listener, index: int) -> _Listener:
        files: dict[_Bucket, list[tuple[tuple[int, ...], _Entry]]] = {}
        for ri, route in enumerate(listener.routes):
            name = route.name if route.name is not None else f"route{ri}"
            for mi, match in enumerate(route.matches):
                entry = _Entry(
                    route,
                    name,
                    match,
                    re.compile(match.path.regex) if match.path.regex is not None else None,
                    tuple(
                        (h.name.lower().encode("latin-1"), _Value.compile(h.value))
                        for h in match.headers
                    ),
                    tuple((q.name, _Value.compile(q.value)) for q in match.query),
                )
                key = (*(-r for r in _rank(match)), ri, mi)
                buckets = [_bucket(h) for h in route.hostnames] or [("none", "")]
                for bucket in dict.fromkeys(buckets):
                    files.setdefault(bucket, []).append((key, entry))
        return cls(
            listener,
            listener.name if listener.name is not None else f"listener{index}",
            (listener.hostname or "").lower(),
            {
                b: tuple(e for _, e in sorted(entries, key=lambda ke: ke[0]))
                for b, entries in files.items()
            },
        )


@attrs.frozen
class Router:
    """The compiled listeners and routes of one ``Bind``."""

    listeners: tuple[_Listener, ...]

    @classmethod
    def from_bind(cls, bind: Bind) -> Router:
        """Compile ``bind`` (regexes once, routes sorted once).

        Raises:
            re.error: a regex does not compile (the converter checks this).
        """
        return cls(tuple(_Listener.compile(li, i) for i, li in enumerate(bind.listeners)))

    def _listener(self, host: str) -> _Listener | None:
        for li in self.listeners:
            if li.hostname == host and not li.hostname.startswith("*"):
                return li
        wildcards = [
            li
            for li in self.listeners
            if li.hostname.startswith("*") and host.endswith(li.hostname[1:])
        ]
        if wildcards:
            return max(wildcards, key=lambda li: len(li.hostname))  # first of the longest
        return next((li for li in self.listeners if not li.hostname), None)

    def select(
        self, host: str, path: str, method: str, headers: Headers, query: str
    ) -> Selected | None:
        """Pick the listener and route for a request.

        Args:
            host: the Host header (or ``:authority``), with or without port.
            path: the request path, without the query string.
            method: the request method, e.g. ``"GET"``.
            headers: the request headers as raw (name, value) pairs.
            query: the raw query string, without ``?``.

        Returns:
            The selection, or ``None`` when no listener or route matches.
        """
        host = request_host(host)
        listener = self._listener(host)
        if listener is None:
            return None
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True)) if query else {}
        for bucket in _host_buckets(host):
            for entry in listener.files.get(bucket, ()):
                if entry.matches(path, method, headers, params):
                    return Selected(
                        listener.listener, entry.route, entry.match, listener.name, entry.route_name
                    )
        return None


def choose_backend(backends: Sequence[Backend], r: float) -> Backend | None:
    """Pick a backend by weight.

    Args:
        backends: the route's backends.
        r: a random number in [0, 1).

    Returns:
        The backend, or ``None`` when there are none or every weight is 0.
    """
    total = sum(b.weight for b in backends)
    if total <= 0:
        return None
    point = r * total
    for b in backends:
        if b.weight > 0 and point < b.weight:
            return b
        point -= b.weight
    return next(b for b in reversed(backends) if b.weight > 0)  # r rounding up to 1.0
