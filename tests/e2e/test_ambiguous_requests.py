"""Requests that could be read two ways are refused or made unambiguous
before anything reaches an upstream: absolute-form targets, invalid Host
values, oversized header lines and counts, underscore header names."""

from __future__ import annotations

import json
import logging
from typing import Any

import h11
import pytest

from tests.e2e.support import (
    Upstream,
    echo_handler,
    proxy_config,
    raw_exchange,
    recording_mcp_upstream,
    request,
    run_gateway,
    serve_upstream,
)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agentgw.access"]


def body_of(reply: bytes) -> bytes:
    return reply.split(b"\r\n\r\n", 1)[1]


def hosted_config(port: int, **http: Any) -> dict[str, Any]:
    """A route for gw.test only."""
    config = proxy_config(port, **({"http": http} if http else {}))
    config["binds"][0]["listeners"][0]["routes"][0]["hostnames"] = ["gw.test"]
    return config


async def recording(req: h11.Request, body: bytes, up: Upstream) -> Any:
    return 200, [(b"content-type", b"text/plain")], b"ok"


# ---------------------------------------------------------------- absolute-form


async def test_absolute_form_with_a_foreign_authority_finds_no_route(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RFC 9112 section 3.2.2: the target's authority replaces Host, so
    ``GET http://evil.test/x`` with ``Host: gw.test`` is a request for
    evil.test, which has no route."""
    caplog.set_level(logging.INFO, logger="agentgw.access")
    async with serve_upstream(recording) as up, run_gateway(hosted_config(up.port)) as (_, port):
        reply = await raw_exchange(
            port, b"GET http://evil.test/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 404 ")
        assert body_of(reply) == b"route not found\n"
        assert up.connections == 0
    assert "http.host=evil.test" in access_lines(caplog)[0]


async def test_absolute_form_is_routed_and_forwarded_in_origin_form() -> None:
    async with serve_upstream(recording) as up, run_gateway(hosted_config(up.port)) as (_, port):
        reply = await raw_exchange(
            port,
            b"GET HTTP://GW.test:8080/x?q=1 HTTP/1.1\r\nHost: other.test\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 200 "), reply
    (seen, _), *_ = up.seen
    assert seen.target == b"/x?q=1"
    hosts = [v for n, v in seen.headers if n == b"host"]
    assert hosts == [b"GW.test:8080"]


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (b"http://user@gw.test/x", b"invalid request target authority"),
        (b"http:///x", b"invalid request target authority"),
        (b"ftp://gw.test/x", b"malformed request target"),
        (b"gw.test:443", b"malformed request target"),
        (b"*", b"malformed request target"),  # asterisk-form is for OPTIONS only
    ],
)
async def test_malformed_targets_are_400(target: bytes, reason: bytes) -> None:
    async with serve_upstream(recording) as up, run_gateway(hosted_config(up.port)) as (_, port):
        reply = await raw_exchange(port, b"GET %s HTTP/1.1\r\nHost: gw.test\r\n\r\n" % target)
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert body_of(reply) == reason + b"\n"
        assert up.connections == 0


async def test_connect_is_refused() -> None:
    async with serve_upstream(recording) as up, run_gateway(proxy_config(up.port)) as (_, port):
        connect = b"CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\n\r\n"
        reply = await raw_exchange(port, connect)
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert up.connections == 0


# ---------------------------------------------------------------- Host


@pytest.mark.parametrize(
    "host",
    [b"", b"a b", b"a:b", b"a:99999", b"a:1:2", b"user@a", b"[::1", b"a/b", b"a\tb", b"%zz"],
)
async def test_invalid_host_is_400(host: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.access")
    async with serve_upstream(recording) as up, run_gateway(proxy_config(up.port)) as (_, port):
        reply = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert reply.startswith(b"HTTP/1.1 400 "), reply
        assert body_of(reply) == b"invalid Host header\n"
        assert up.connections == 0
    (line,) = access_lines(caplog)
    assert "http.status=400" in line and 'error="invalid Host header: ' in line


@pytest.mark.parametrize(
    "host", [b"gw.test", b"GW.test:8080", b"127.0.0.1:1", b"[::1]:3000", b"xn--bcher-kva.example"]
)
async def test_valid_hosts_pass(host: bytes) -> None:
    async with serve_upstream(recording) as up, run_gateway(proxy_config(up.port)) as (_, port):
        resp = await request(port, "GET", "/", host=host.decode())
        assert resp.status == 200
        assert up.requests == 1


# ---------------------------------------------------------------- head limits


async def test_header_line_over_8_kib_is_431(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.access")
    async with serve_upstream(recording) as up, run_gateway(proxy_config(up.port)) as (_, port):
        line = b"X-Long: " + b"v" * 9216
        reply = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n" % line)
        assert reply.startswith(b"HTTP/1.1 431 ")
        assert body_of(reply) == b"header line too long\n"
        assert up.connections == 0
        ok = await request(port, "GET", "/", headers=[(b"x-long", b"v" * 8000)])
        assert ok.status == 200
    assert "b'X-Long': 9224 bytes, over 8192" in access_lines(caplog)[0]


async def test_more_than_100_header_fields_is_431() -> None:
    async with serve_upstream(recording) as up, run_gateway(proxy_config(up.port)) as (_, port):
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(150))
        reply = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n%s\r\n" % fields)
        assert reply.startswith(b"HTTP/1.1 431 ")
        assert body_of(reply) == b"too many header fields\n"
        assert up.connections == 0
        # Host and 99 more is exactly 100.
        ok = await request(port, "GET", "/", headers=[(b"x-f%d" % i, b"v") for i in range(99)])
        assert ok.status == 200


async def test_head_limits_are_configurable() -> None:
    async with serve_upstream(recording) as up:
        config = proxy_config(up.port, http={"maxHeaders": 5, "maxHeaderLineBytes": "1KiB"})
        async with run_gateway(config) as (_, port):
            many = await request(port, "GET", "/", headers=[(b"x-f%d" % i, b"v") for i in range(5)])
            long = await request(port, "GET", "/", headers=[(b"x-long", b"v" * 1100)])
            fine = await request(port, "GET", "/", headers=[(b"x-f%d" % i, b"v") for i in range(4)])
    assert many.status == 431 and long.status == 431 and fine.status == 200
    assert up.requests == 1


async def test_response_head_limits_follow_the_same_keys() -> None:
    async def fat(req: h11.Request, body: bytes, up: Upstream) -> Any:
        return 200, [(b"x-f%d" % i, b"v") for i in range(10)], b"ok"

    async with serve_upstream(fat) as up:
        config = proxy_config(up.port, http={"maxHeaders": 5})
        async with run_gateway(config) as (_, port):
            resp = await request(port, "GET", "/")
    assert resp.status == 502 and resp.body == b"upstream protocol error\n"


# ---------------------------------------------------------------- underscores


async def test_underscore_headers_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agentgw.server.connection")
    async with serve_upstream(echo_handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        resp = await request(
            port, "GET", "/", headers=[(b"X_User", b"admin"), (b"X-User", b"alice")]
        )
        assert resp.status == 200
    (seen, _), *_ = up.seen
    names = [n for n, _ in seen.headers]
    assert b"x_user" not in names and (b"x-user", b"alice") in list(seen.headers)
    messages = [r.getMessage() for r in caplog.records if r.name == "agentgw.server.connection"]
    assert "dropped request headers with an underscore: x_user" in messages
    assert not any("admin" in m for m in messages)


async def test_underscore_headers_pass_when_allowed() -> None:
    async with serve_upstream(echo_handler) as up:
        config = proxy_config(up.port, http={"allowUnderscoreHeaders": True})
        async with run_gateway(config) as (_, port):
            resp = await request(port, "GET", "/", headers=[(b"X_User", b"admin")])
            assert resp.status == 200
    (seen, _), *_ = up.seen
    assert (b"x_user", b"admin") in list(seen.headers)


async def test_underscore_headers_are_dropped_on_the_mcp_route() -> None:
    async with serve_upstream(recording_mcp_upstream) as up:
        target = {"name": "rec", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}}
        route = {
            "name": "mcp",
            "matches": [{"path": {"pathPrefix": "/mcp"}}],
            "backends": [{"mcp": {"targets": [target]}}],
        }
        config = {
            "binds": [{"port": 0, "address": "127.0.0.1", "listeners": [{"routes": [route]}]}],
            "config": {"session": {"key": "11" * 32}},
        }
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        async with run_gateway(config) as (_, port):
            resp = await request(
                port,
                "POST",
                "/mcp",
                headers=[
                    (b"accept", b"application/json, text/event-stream"),
                    (b"content-type", b"application/json"),
                    (b"x_user", b"admin"),
                    (b"x-tenant", b"blue"),
                ],
                body=json.dumps(init).encode(),
            )
            assert resp.status == 200
    seen = dict(up.seen[0][0].headers)
    assert b"x_user" not in seen and seen[b"x-tenant"] == b"blue"
