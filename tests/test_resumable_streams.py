"""The pure parts of resumable SSE streams and ended sessions."""

from __future__ import annotations

import pytest

from agentgw.mcp.ended import EndedSessions
from agentgw.mcp.replay import (
    EventLog,
    event_id,
    has_resumable_streams,
    parse_event_id,
    prefers_event_stream,
)
from agentgw.wire.sse import SSEDecoder


def _decode(data: bytes) -> list[tuple[str | None, str]]:
    return [(e.id, e.data) for e in SSEDecoder().feed(data)]


def test_event_ids_name_their_stream_and_position() -> None:
    assert event_id("k-_9", 12) == "k-_9:12"
    assert parse_event_id("k-_9:12") == ("k-_9", 12)
    assert parse_event_id("a:b:3") == ("a:b", 3)  # the last colon splits


@pytest.mark.parametrize(
    "text", ["", "12", ":3", "k:", "k:-1", "k:1.5", "k: 1", "k:\u0661", "k:" + "9" * 19]
)
def test_event_ids_not_ours_are_refused(text: str) -> None:
    assert parse_event_id(text) is None


def test_priming_event_has_an_id_a_retry_and_no_data() -> None:
    log = EventLog("s")
    priming = log.priming(1500)
    assert priming == b"id: s:0\nretry: 1500\ndata:\n\n"
    assert _decode(priming) == [("s:0", "")]


def test_a_log_replays_what_followed_an_event_once() -> None:
    log = EventLog("s")
    events = [log.append(f'{{"n":{n}}}')[0] for n in range(1, 5)]
    assert _decode(events[0]) == [("s:1", '{"n":1}')]
    assert log.after(0) == events
    assert log.after(2) == events[2:]
    assert log.after(4) == []
    assert log.after(5) is None  # never sent


def test_a_log_keeps_at_most_its_events_and_says_what_fell_out() -> None:
    log = EventLog("s", max_events=3)
    fell = [log.append(str(n))[1] for n in range(5)]
    assert fell == [0, 0, 0, 1, 1]
    assert log.dropped == 2
    assert log.after(2) is not None and len(log.after(2) or []) == 3
    # Events 1 and 2 fell out: a resume from before them would have a gap.
    assert log.after(1) is None
    assert log.after(0) is None


def test_a_log_keeps_at_most_its_bytes_but_always_the_newest() -> None:
    log = EventLog("s", max_bytes=40)
    log.append("x" * 10)
    log.append("y" * 10)
    assert log.dropped == 1 and log.kept_bytes <= 40
    big, fell = log.append("z" * 100)
    assert fell == 1 and log.after(2) == [big]


def test_prefers_event_stream_by_quality_then_order() -> None:
    assert prefers_event_stream(b"text/event-stream, application/json")
    assert not prefers_event_stream(b"application/json, text/event-stream")
    assert prefers_event_stream(b"application/json;q=0.5, text/event-stream")
    assert not prefers_event_stream(b"text/event-stream;q=0.1, application/json")
    assert not prefers_event_stream(b"text/event-stream;q=0, application/json;q=0")
    assert prefers_event_stream(b"text/event-stream")
    assert not prefers_event_stream(None)
    assert not prefers_event_stream(b"*/*")


def test_priming_only_for_clients_that_resume() -> None:
    assert has_resumable_streams("2025-11-25")
    assert not has_resumable_streams("2025-06-18")
    assert not has_resumable_streams(None)


def test_ended_sessions_are_kept_for_their_ttl() -> None:
    ended = EndedSessions(ttl=10)
    ended.add("a", now=0)
    ended.add("b", now=5)
    assert ended.has("a", now=9.9) and ended.has("b", now=9.9)
    assert not ended.has("a", now=10) and ended.has("b", now=10)
    assert not ended.has("b", now=15) and len(ended) == 0


def test_ended_sessions_are_bounded_oldest_out() -> None:
    ended = EndedSessions(ttl=100, limit=2)
    for n, sid in enumerate("abc"):
        ended.add(sid, now=n)
    assert not ended.has("a", now=3)
    assert ended.has("b", now=3) and ended.has("c", now=3)
    ended.add("b", now=4)  # again: it moves to the end
    ended.add("d", now=5)
    assert ended.has("b", now=5) and not ended.has("c", now=5)
