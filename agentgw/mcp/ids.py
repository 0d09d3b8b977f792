"""Bounded remapping of JSON-RPC request ids between the two sides.

How this works: a request crossing the gateway gets a fresh gateway id from
a counter, and the map remembers which target it belongs to and what its
original id was. Both directions need this:

* client -> upstream: several clients of one session may reuse ids; the
  upstream sees the gateway's ids instead, so they never collide. Integer
  ids (``IdMap()``).
* upstream -> client: sampling, elicitation, roots and ping requests from
  different targets may carry the same id; the client sees ``"agw-<n>"``
  (``IdMap(prefix="agw-")``), and its answer is routed back to the target
  with the original id, of the original JSON type.

The map holds at most ``capacity`` requests in flight. agentgateway encodes
the route into the id itself (``agw_<upstream>_<n|s>_<original>``) and keeps
no state; a map instead lets a pending request be found, cancelled and
dropped when its target goes away, at a bounded cost.
"""

from __future__ import annotations

import re

import attrs

from agentgw.errors import HTTPError
from agentgw.wire.jsonrpc import JsonRpcId, is_valid_id

DEFAULT_CAPACITY = 10_000


class IdMapFull(HTTPError):
    """Too many requests in flight through one map (503)."""

    status = 503


@attrs.frozen
class Route:
    """Where a gateway id came from: the target and the id it had there."""

    target: str
    original: JsonRpcId


@attrs.frozen
class IdMapStatistics:
    in_flight: int
    capacity: int
    allocated_total: int


def _index_key(target: str, original: JsonRpcId) -> tuple[str, bool, JsonRpcId]:
    # "1" and 1 are different ids.
    return target, isinstance(original, str), original


@attrs.define(eq=False)
class IdMap:
    """Gateway ids to ``Route`` and back, for requests in flight.

    Args:
        capacity: how many requests may be in flight at once.
        prefix: None for integer gateway ids, else string ids
            ``f"{prefix}{n}"``.
    """

    capacity: int = DEFAULT_CAPACITY
    prefix: str | None = None
    _counter: int = attrs.field(init=False, default=0)
    _routes: dict[int, Route] = attrs.field(init=False, factory=dict)
    _index: dict[tuple[str, bool, JsonRpcId], int] = attrs.field(init=False, factory=dict)
    _pattern: re.Pattern[str] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("IdMap capacity must be at least 1")
        if self.prefix is not None:
            self._pattern = re.compile(re.escape(self.prefix) + r"([1-9][0-9]{0,18})")

    def __len__(self) -> int:
        return len(self._routes)

    def __repr__(self) -> str:
        return f"<IdMap {len(self._routes)}/{self.capacity} in flight, prefix={self.prefix!r}>"

    def is_full(self) -> bool:
        return len(self._routes) >= self.capacity

    def statistics(self) -> IdMapStatistics:
        return IdMapStatistics(len(self._routes), self.capacity, self._counter)

    def _number(self, gateway_id: object) -> int | None:
        if self._pattern is None:
            if isinstance(gateway_id, int) and not isinstance(gateway_id, bool):
                return gateway_id
            return None
        if isinstance(gateway_id, str) and (found := self._pattern.fullmatch(gateway_id)):
            return int(found[1])
        return None

    def _gateway_id(self, n: int) -> JsonRpcId:
        return n if self.prefix is None else f"{self.prefix}{n}"

    def allocate(self, target: str, original: JsonRpcId) -> JsonRpcId:
        """A new gateway id standing for ``original`` from ``target``.

        Raises:
            IdMapFull: ``capacity`` requests are already in flight.
            ValueError: ``original`` is not a str or an int.
        """
        if not is_valid_id(original):
            raise ValueError(f"not a JSON-RPC request id: {original!r}")
        if self.is_full():
            raise IdMapFull(f"more than {self.capacity} requests in flight")
        self._counter += 1
        n = self._counter
        self._routes[n] = Route(target, original)
        self._index[_index_key(target, original)] = n
        return self._gateway_id(n)

    def get(self, gateway_id: object) -> Route | None:
        """The route of a gateway id still in flight, or None."""
        n = self._number(gateway_id)
        return None if n is None else self._routes.get(n)

    def pop(self, gateway_id: object, *, target: str | None = None) -> Route | None:
        """Take the route of an answered request out of the map.

        Args:
            gateway_id: the id the answer carries, of any JSON type.
            target: if given, the answer must come from this target; an
                answer from another one leaves the entry in place.

        Returns:
            The route, or None for an id this map does not hold.
        """
        n = self._number(gateway_id)
        route = None if n is None else self._routes.get(n)
        if route is None or n is None or (target is not None and route.target != target):
            return None
        self._drop(n, route)
        return route

    def _drop(self, n: int, route: Route) -> None:
        del self._routes[n]
        key = _index_key(route.target, route.original)
        if self._index.get(key) == n:
            del self._index[key]

    def find(self, target: str, original: JsonRpcId) -> JsonRpcId | None:
        """The gateway id of the latest request in flight that ``target``
        sent as ``original`` (to translate a cancellation), or None."""
        if not is_valid_id(original):
            return None
        n = self._index.get(_index_key(target, original))
        return None if n is None else self._gateway_id(n)

    def discard_target(self, target: str) -> list[JsonRpcId]:
        """Forget every request in flight of ``target`` (it went away).

        Returns:
            Their gateway ids, oldest first.
        """
        gone = [n for n, route in self._routes.items() if route.target == target]
        for n in gone:
            self._drop(n, self._routes[n])
        return [self._gateway_id(n) for n in gone]
