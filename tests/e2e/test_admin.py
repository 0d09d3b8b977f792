"""The admin server (``config.adminAddr``) and the readiness server, with real requests."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from agentgw.observability import logs
from tests.e2e.support import (
    Upstream,
    free_port,
    gateway_subprocess,
    proxy_config,
    request,
    run_gateway,
    serve_upstream,
)
from tests.e2e.test_mcp_gateway import DEMO, PEER, _call, _initialize, mcp_config, stdio
from tests.e2e.test_metrics import with_stats
from tests.test_jwt import rsa_jwk

JWK = rsa_jwk("k")
SECRETS = {
    "session": "ab" * 32,
    "header": "Bearer sk-live-header-secret",
    "custom": "custom-header-secret",
    "env": "ghp_env_secret_value",
    "url": "url-password-secret",
    "collector": "collector-api-key-secret",
    "jwks": JWK["n"],
}


@pytest.fixture(autouse=True)
def _restore_log_level() -> Any:
    yield
    logs.set_level(None)


def secret_config() -> dict[str, Any]:
    jwks = json.dumps({"keys": [JWK]})
    config = mcp_config(
        stdio("demo", DEMO, env={"GITHUB_TOKEN": SECRETS["env"], "PLAIN": "also-hidden"}),
        {"name": "remote", "mcp": {"host": f"http://user:{SECRETS['url']}@127.0.0.1:9/mcp"}},
    )
    config["config"]["session"] = {"key": SECRETS["session"]}
    config["config"]["sensitiveHeaders"] = ["x-custom-secret"]
    config["config"]["tracing"] = {
        "otlpEndpoint": "http://127.0.0.1:9",
        "otlpProtocol": "http",
        "headers": {"x-api-team": SECRETS["collector"]},
    }
    route = config["binds"][0]["listeners"][0]["routes"][0]
    route["policies"] = {
        "requestHeaderModifier": {
            "set": {
                "authorization": SECRETS["header"],
                "x-custom-secret": SECRETS["custom"],
                "x-visible": "plain-value",
            }
        },
        "jwtAuth": {"mode": "optional", "issuer": "https://issuer.example", "jwks": jwks},
    }
    return with_stats(config)


async def test_config_dump_redacts_every_secret() -> None:
    async with run_gateway(secret_config()) as (gw, _):
        admin = gw.management_addresses["admin"][1]
        response = await request(admin, "GET", "/config_dump")
        assert response.status == 200
        assert response.header(b"content-type") == b"application/json"
        text = response.body.decode()
        for name, secret in SECRETS.items():
            assert secret not in text, name
        assert "also-hidden" not in text
        doc = json.loads(text)
        settings = doc["config"]["config"]
        assert settings["session"]["key"] == "<redacted>"
        assert settings["tracing"]["headers"] == {"x-api-team": "<redacted>"}
        route = doc["config"]["binds"][0]["listeners"][0]["routes"][0]
        headers = route["policies"]["requestHeaderModifier"]["set"]
        assert headers == {
            "authorization": "<redacted>",
            "x-custom-secret": "<redacted>",
            "x-visible": "plain-value",  # only secrets go
        }
        assert route["policies"]["jwtAuth"]["issuer"] == "https://issuer.example"
        target = route["backends"][0]["mcp"]["targets"][1]
        assert target["mcp"]["host"] == "http://user:<redacted>@127.0.0.1:9/mcp"
        assert doc["version"]["version"]
        assert (await request(admin, "POST", "/config_dump")).status == 405
        assert (await request(admin, "GET", "/nothing")).status == 404
        index = await request(admin, "GET", "/")
        assert b"/config_dump" in index.body and b"/logging" in index.body


async def test_the_log_level_is_read_and_set_at_run_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with run_gateway(with_stats(mcp_config(stdio("demo", DEMO)))) as (gw, _):
        admin = gw.management_addresses["admin"][1]
        before = logs.current_level()
        answer = await request(admin, "GET", "/logging")
        assert answer.body == f"current log level is {before}\n".encode()
        answer = await request(admin, "POST", "/logging?level=debug")
        assert (answer.status, answer.body) == (200, b"current log level is debug\n")
        assert logging.getLogger("agentgw.relay").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("somebody.else").isEnabledFor(logging.DEBUG)
        refused = await request(admin, "POST", "/logging?level=chatty")
        assert refused.status == 400 and b"expected one of" in refused.body
        assert logs.current_level() == "debug"
        answer = await request(admin, "POST", "/logging?reset")
        assert answer.body == f"current log level is {before}\n".encode()
        assert (await request(admin, "PUT", "/logging")).status == 405


async def _slow_handler(req: h11.Request, body: bytes, up: Upstream) -> Any:
    await trio.sleep(1.5)
    return 200, [], b"slow"


async def test_readiness_turns_503_while_draining_liveness_stays_200() -> None:
    async with serve_upstream(_slow_handler) as up:
        config = with_stats(proxy_config(up.port))
        async with run_gateway(config) as (gw, port):
            ready = gw.management_addresses["readiness"][1]
            admin = gw.management_addresses["admin"][1]
            for where in (ready, admin):
                assert (await request(where, "GET", "/healthz/ready")).status == 200
                assert (await request(where, "GET", "/healthz/live")).status == 200
            async with trio.open_nursery() as nursery:
                answers: list[int] = []

                async def slow() -> None:
                    answers.append((await request(port, "GET", "/")).status)

                nursery.start_soon(slow)
                with trio.fail_after(5):
                    while up.requests == 0:
                        await trio.sleep(0.01)
                gw.shutdown()  # a request is in flight: the drain waits for it
                await trio.sleep(0.05)
                for where in (ready, admin):
                    draining = await request(where, "GET", "/healthz/ready")
                    assert (draining.status, draining.body) == (503, b"draining\n")
                    assert (await request(where, "GET", "/healthz/live")).status == 200
            assert answers == [200]


async def test_sessions_and_targets_with_their_state(tmp_path: Path) -> None:
    config = mcp_config(stdio("demo", DEMO), stdio("paged", PEER))
    async with run_gateway(with_stats(config)) as (gw, port):
        admin = gw.management_addresses["admin"][1]
        token = await _initialize(port)
        status, _ = await _call(port, token, "paged_crash", {})  # the paged target dies
        assert status == 200
        with trio.fail_after(10):
            while True:
                listed = json.loads((await request(admin, "GET", "/sessions")).body)["sessions"]
                states = {t["name"]: t for t in listed[0]["targets"]}
                if states["paged"]["state"] == "failed":
                    break
                await trio.sleep(0.05)
        (session,) = listed
        assert session["route"] == {"bind": "bind/0", "listener": "mcp", "route": "mcp"}
        assert session["protocolVersion"] == "2025-06-18"
        assert states["demo"] == {"name": "demo", "state": "connected"}
        assert states["paged"]["error"]
        assert token not in json.dumps(listed)  # only a prefix of the id, never the token
        targets = json.loads((await request(admin, "GET", "/targets")).body)["targets"]
        by_name = {t["name"]: t for t in targets}
        assert by_name["demo"]["transport"] == "stdio"
        assert by_name["demo"]["sessions"] == {"connected": 1}
        assert by_name["paged"]["sessions"] == {"failed": 1}
        assert by_name["paged"]["lastError"] == states["paged"]["error"]


async def test_admin_listens_on_localhost_by_default() -> None:
    # Only the admin's default is checked on a real socket: 15000 may be
    # taken on this host by something else, then the server is skipped.
    config = mcp_config(stdio("demo", DEMO))
    config["config"].update(statsAddr="off", readinessAddr="off")
    async with run_gateway(config) as (gw, _):
        if "admin" in gw.management_addresses:
            assert gw.management_addresses["admin"] == ("127.0.0.1", 15000)
        assert "stats" not in gw.management_addresses


# ---------------------------------------------------------------- --workers


@asynccontextmanager
async def _workers(tmp_path: Path, config: dict[str, Any]) -> AsyncIterator[Any]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    async with gateway_subprocess("-c", json.dumps(config), "--workers", "2", env=env) as (p, _):
        with trio.fail_after(20):
            while len(list(tmp_path.glob("agentgw-*/w*-admin.sock"))) < 2:  # noqa: ASYNC240
                await trio.sleep(0.05)
        yield p


async def test_under_workers_the_admin_port_answers_for_every_worker(tmp_path: Path) -> None:
    config = mcp_config(stdio("paged", PEER))
    port, admin = await free_port(), await free_port()
    config["binds"][0]["port"] = port
    config["config"].update(adminAddr=f"127.0.0.1:{admin}", statsAddr="off", readinessAddr="off")
    async with _workers(tmp_path, config) as proc:
        tokens = [await _initialize(port) for _ in range(8)]
        listed = json.loads((await request(admin, "GET", "/sessions")).body)["sessions"]
        assert len(listed) == len(tokens)
        assert {s["worker"] for s in listed} == {0, 1}
        targets = json.loads((await request(admin, "GET", "/targets")).body)["targets"]
        assert sorted(t["worker"] for t in targets) == [0, 1]
        # A level set through either worker is set on both.
        answer = await request(admin, "POST", "/logging?level=debug")
        assert answer.body == b"current log level is debug\n", answer.body
        for _ in range(4):  # whichever worker answers, both say debug
            answer = await request(admin, "GET", "/logging")
            assert answer.body == b"current log level is debug\n", answer.body
        proc.terminate()
        with trio.fail_after(15):
            assert await proc.wait() == 0
