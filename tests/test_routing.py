from __future__ import annotations

import collections
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentgw.config import Backend, Bind, PathMatch, config_from_dict
from agentgw.routing import Router, choose_backend, path_matches, request_host


def router(*listeners: dict[str, Any]) -> Router:
    config = config_from_dict({"binds": [{"port": 3000, "listeners": list(listeners)}]})
    return Router.from_bind(config.binds[0])


def pick(
    r: Router,
    path: str = "/",
    *,
    host: str = "example.com",
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: str = "",
) -> str | None:
    selected = r.select(host, path, method, headers or [], query)
    return None if selected is None else selected.route_name


def route(name: str, *matches: dict[str, Any], **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, **extra}
    if matches:
        d["matches"] = list(matches)
    return d


def prefix(p: str, **extra: Any) -> dict[str, Any]:
    return {"path": {"pathPrefix": p}, **extra}


def exact(p: str, **extra: Any) -> dict[str, Any]:
    return {"path": {"exact": p}, **extra}


def regex(p: str, **extra: Any) -> dict[str, Any]:
    return {"path": {"regex": p}, **extra}


# ---------------------------------------------------------------- paths


def test_exact_beats_longer_prefix_beats_shorter_prefix_beats_regex() -> None:
    r = router(
        {
            "routes": [
                route("regex", regex("/api/.*")),
                route("root", prefix("/")),
                route("api", prefix("/api")),
                route("api-users", prefix("/api/users")),
                route("exact", exact("/api/users/me")),
            ]
        }
    )
    assert pick(r, "/api/users/me") == "exact"
    assert pick(r, "/api/users/1") == "api-users"
    assert pick(r, "/api/other") == "api"
    assert pick(r, "/elsewhere") == "root"


def test_regex_is_full_match_and_longer_pattern_first() -> None:
    r = router({"routes": [route("short", regex("/a.*")), route("long", regex("/a/[0-9]+"))]})
    assert pick(r, "/a/12") == "long"
    assert pick(r, "/a/x") == "short"
    assert pick(r, "/b/a/1") is None


@pytest.mark.parametrize(
    ("prefix_", "path", "expected"),
    [
        ("/foo", "/foo", True),
        ("/foo", "/foo/", True),
        ("/foo", "/foo/bar", True),
        ("/foo", "/foobar", False),
        ("/foo/", "/foo", True),
        ("/foo/", "/foo/bar", True),
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/foo/bar", "/foo", False),
    ],
)
def test_prefix_is_by_segment(prefix_: str, path: str, expected: bool) -> None:
    assert path_matches(PathMatch(path_prefix=prefix_), path) is expected


segment = st.text(alphabet="abc/", min_size=0, max_size=6)


@given(segment, segment)
def test_prefix_matches_its_own_extensions(base: str, tail: str) -> None:
    p = "/" + base.strip("/")
    match = PathMatch(path_prefix=p)
    assert path_matches(match, p)
    assert path_matches(match, p.rstrip("/") + "/" + tail)
    # A path that extends the last segment without a '/' is not a match.
    if p != "/" and tail and not tail.startswith("/"):
        assert not path_matches(match, p + tail)


@given(st.text(alphabet="ab/", max_size=8), st.text(alphabet="ab/", max_size=8))
def test_prefix_agrees_with_segment_definition(prefix_: str, path: str) -> None:
    prefix_, path = "/" + prefix_, "/" + path
    want_segments = [s for s in prefix_.split("/") if s]
    have_segments = [s for s in path.split("/") if s]
    # Without empty segments ('//'), prefix match is segment-list prefix.
    if "//" in prefix_.rstrip("/") or "//" in path.rstrip("/"):
        return
    expected = have_segments[: len(want_segments)] == want_segments
    assert path_matches(PathMatch(path_prefix=prefix_), path) is expected


def test_no_match_gives_none() -> None:
    r = router({"routes": [route("a", exact("/a"))]})
    assert pick(r, "/b") is None


# ---------------------------------------------------------------- method, headers, query


def test_method_match_wins_on_equal_paths() -> None:
    r = router(
        {
            "routes": [
                route("any", prefix("/items")),
                route("post", prefix("/items", method="POST")),
            ]
        }
    )
    assert pick(r, "/items", method="POST") == "post"
    assert pick(r, "/items", method="GET") == "any"


def test_path_specificity_beats_method() -> None:
    r = router(
        {"routes": [route("post", prefix("/", method="POST")), route("items", prefix("/items"))]}
    )
    assert pick(r, "/items", method="POST") == "items"


def test_more_headers_win_then_more_query() -> None:
    one = [{"name": "x-a", "value": {"exact": "1"}}]
    two = [*one, {"name": "x-b", "value": {"regex": "[0-9]+"}}]
    q = [{"name": "debug", "value": {"exact": "1"}}]
    r = router(
        {
            "routes": [
                route("plain", prefix("/")),
                route("query", prefix("/", query=q)),
                route("one", prefix("/", headers=one)),
                route("two", prefix("/", headers=two)),
            ]
        }
    )
    both = [(b"X-A", b"1"), (b"x-b", b"42")]
    assert pick(r, headers=both, query="debug=1") == "two"
    assert pick(r, headers=[(b"x-a", b"1")], query="debug=1") == "one"
    assert pick(r, headers=[(b"x-b", b"42")], query="debug=1") == "query"
    assert pick(r, headers=[(b"x-b", b"4x2"), (b"x-a", b"1")]) == "one"
    assert pick(r, query="debug=2") == "plain"


def test_header_match_any_repeated_field_and_regex_is_full() -> None:
    h = [{"name": "accept", "value": {"regex": "text/.*"}}]
    r = router({"routes": [route("text", prefix("/", headers=h))]})
    assert pick(r, headers=[(b"accept", b"application/json"), (b"accept", b"text/html")]) == "text"
    assert pick(r, headers=[(b"accept", b"xtext/html")]) is None
    assert pick(r) is None


def test_query_is_decoded() -> None:
    q = [{"name": "q", "value": {"exact": "a b/c"}}]
    r = router({"routes": [route("search", prefix("/", query=q))]})
    assert pick(r, query="x=1&q=a+b%2Fc") == "search"
    assert pick(r, query="q=a") is None


def test_ties_keep_config_order_and_names_default() -> None:
    r = router({"routes": [{"matches": [prefix("/a")]}, {"matches": [prefix("/a")]}]})
    selected = r.select("h", "/a", "GET", [], "")
    assert selected is not None
    assert (selected.listener_name, selected.route_name) == ("listener0", "route0")


def test_best_match_of_one_route_is_reported() -> None:
    r = router({"routes": [route("r", prefix("/"), exact("/x"))]})
    selected = r.select("h", "/x", "GET", [], "")
    assert selected is not None
    assert selected.route_match.path == PathMatch(exact="/x")


# ---------------------------------------------------------------- hosts


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("[::1]:3000", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("", ""),
    ],
)
def test_request_host(header: str, host: str) -> None:
    assert request_host(header) == host


def test_route_hostnames_exact_then_wildcard_then_none() -> None:
    r = router(
        {
            "routes": [
                route("any", prefix("/")),
                route("wild", prefix("/"), hostnames=["*.example.com"]),
                route("deep-wild", prefix("/"), hostnames=["*.b.example.com"]),
                route("exact", prefix("/"), hostnames=["a.example.com"]),
            ]
        }
    )
    assert pick(r, host="a.example.com:3000") == "exact"
    assert pick(r, host="A.Example.Com") == "exact"
    assert pick(r, host="x.b.example.com") == "deep-wild"
    assert pick(r, host="x.y.example.com") == "wild"
    assert pick(r, host="example.com") == "any"
    assert pick(r, host="other.org") == "any"


def test_host_specificity_beats_path_specificity() -> None:
    r = router(
        {
            "routes": [
                route("long-path", exact("/a/b/c")),
                route("host", prefix("/"), hostnames=["api.example.com"]),
            ]
        }
    )
    assert pick(r, "/a/b/c", host="api.example.com") == "host"
    assert pick(r, "/a/b/c", host="www.example.com") == "long-path"


def test_route_with_hostnames_does_not_serve_other_hosts() -> None:
    r = router({"routes": [route("only", prefix("/"), hostnames=["a.example.com"])]})
    assert pick(r, host="b.example.com") is None


def test_listener_exact_then_longest_wildcard_then_none() -> None:
    def listener(name: str, hostname: str | None) -> dict[str, Any]:
        d: dict[str, Any] = {"name": name, "routes": [route(name, prefix("/"))]}
        if hostname is not None:
            d["hostname"] = hostname
        return d

    r = router(
        listener("default", None),
        listener("wild", "*.example.com"),
        listener("deep", "*.api.example.com"),
        listener("exact", "www.example.com"),
    )
    assert pick(r, host="www.example.com") == "exact"
    assert pick(r, host="WWW.example.com:443") == "exact"
    assert pick(r, host="v1.api.example.com") == "deep"
    assert pick(r, host="shop.example.com") == "wild"
    assert pick(r, host="example.com") == "default"
    assert pick(r, host="[::1]:3000") == "default"

    only_named = router(listener("exact", "www.example.com"))
    assert pick(only_named, host="other.example.com") is None


def test_listener_is_chosen_before_routes() -> None:
    # The first listener has no route for /x; agentgateway does not fall
    # through to another listener.
    r = router(
        {"hostname": "a.test", "routes": [route("a", exact("/a"))]},
        {"routes": [route("x", exact("/x"))]},
    )
    assert pick(r, "/x", host="a.test") is None
    assert pick(r, "/x", host="b.test") == "x"


def test_mcp_shorthand_routes() -> None:
    from agentgw.config import effective_binds

    config = config_from_dict({"mcp": {"targets": [{"name": "t", "stdio": {"cmd": "x"}}]}})
    r = Router.from_bind(effective_binds(config)[-1])
    assert pick(r, "/mcp") == "mcp"
    assert pick(r, "/sse") == "mcp"
    assert pick(r, "/.well-known/oauth-protected-resource") == "mcp"
    assert pick(r, "/") is None


# ---------------------------------------------------------------- weighted choice


def test_choose_backend_by_weight() -> None:
    a, b, zero = (
        Backend(host="a:1", weight=3),
        Backend(host="b:1", weight=1),
        Backend(host="z:1", weight=0),
    )
    backends = [zero, a, zero, b]
    assert choose_backend(backends, 0.0) is a
    assert choose_backend(backends, 0.749) is a
    assert choose_backend(backends, 0.75) is b
    assert choose_backend(backends, 0.999999) is b
    rng = random.Random(1)
    counts = collections.Counter(choose_backend(backends, rng.random()) for _ in range(20000))
    assert set(counts) == {a, b}
    assert 0.72 < counts[a] / 20000 < 0.78


def test_choose_backend_none() -> None:
    assert choose_backend([], 0.5) is None
    assert choose_backend([Backend(host="a:1", weight=0)], 0.5) is None


@given(st.lists(st.integers(0, 5), min_size=1, max_size=5), st.floats(0, 1, exclude_max=True))
def test_choose_backend_never_picks_weight_zero(weights: list[int], r: float) -> None:
    backends = [Backend(host=f"h{i}:1", weight=w) for i, w in enumerate(weights)]
    chosen = choose_backend(backends, r)
    if sum(weights) == 0:
        assert chosen is None
    else:
        assert chosen is not None and chosen.weight > 0


def test_router_from_bind_built_in_python() -> None:
    from agentgw.config import Listener, Route, RouteMatch

    bind = Bind(
        listeners=(Listener(routes=(Route(matches=(RouteMatch(path=PathMatch(exact="/x")),)),)),)
    )
    selected = Router.from_bind(bind).select("h", "/x", "GET", [], "")
    assert selected is not None and selected.route_name == "route0"
