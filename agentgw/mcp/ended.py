"""The ids of sessions that ended, so that their tokens stay dead.

A sealed session token decodes for as long as the key lives, and a token
whose targets are all Streamable HTTP could otherwise resume its session.
A session a client DELETEd (or whose upstream session is gone) is kept
here for ``ttl`` seconds, at most ``limit`` of them, oldest out first. After
``ttl`` its upstream sessions have been ended too (a resume meets the
target's 404, which ends it again).
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

DEFAULT_LIMIT = 100_000


@attrs.define(eq=False)
class EndedSessions:
    ttl: float
    limit: int = DEFAULT_LIMIT
    _until: OrderedDict[str, float] = attrs.field(factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._until)

    def add(self, sid: str, now: float) -> None:
        self._until.pop(sid, None)
        self._until[sid] = now + self.ttl
        self._expire(now)
        while len(self._until) > self.limit:
            self._until.popitem(last=False)

    def has(self, sid: str, now: float) -> bool:
        self._expire(now)
        return sid in self._until

    def _expire(self, now: float) -> None:
        # Insertion order is expiry order: every entry has the same ttl.
        while self._until:
            sid, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[sid]
