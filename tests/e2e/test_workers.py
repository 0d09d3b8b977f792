"""``agentgw --workers N``: real processes sharing a port with SO_REUSEPORT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from agentgw.cli import _without_workers
from agentgw.workers import owner_of_sid
from tests.e2e.support import (
    free_port,
    gateway_subprocess,
    recording_mcp_upstream,
    request,
    serve_upstream,
)
from tests.e2e.test_mcp_gateway import (
    PEER,
    _call,
    _children,
    _initialize,
    _is_running,
    _read,
    mcp_config,
    stdio,
)
from tests.e2e.test_mrtr import OLDER_DEMO
from tests.e2e.test_mrtr import _post as mrtr_post


def test_session_ids_name_their_worker() -> None:
    assert owner_of_sid("abc.w1", 2) == 1
    assert owner_of_sid("abc.w0", 2) == 0
    assert owner_of_sid("abc.w2", 2) is None  # no such worker
    assert owner_of_sid("abc", 2) is None
    assert owner_of_sid("abc.wx", 2) is None


def test_workers_get_the_parents_arguments_without_workers() -> None:
    argv = ["-f", "c.yaml", "--workers", "2", "--log-format=json", "--workers=3"]
    assert _without_workers(argv) == ["-f", "c.yaml", "--log-format=json"]


async def _workers_config(tmp_path: Path) -> tuple[dict[str, Any], int]:
    config = mcp_config(stdio("paged", PEER, env={"PEER_LOG": str(tmp_path / "peer.log")}))
    port = await free_port()
    config["binds"][0]["port"] = port
    return config, port


def _sockets(directory: Path) -> frozenset[tuple[int, int]]:
    paths = directory.glob("agentgw-*/w*-b*.sock")  # the binds' (not the admin's)
    return frozenset((st.st_ino, st.st_ctime_ns) for st in (p.stat() for p in paths))


async def _wait_for_sockets(
    directory: Path, count: int, old: frozenset[tuple[int, int]] = frozenset()
) -> frozenset[tuple[int, int]]:
    """The workers' Unix sockets (inode, change time), once ``count`` are
    there that are not in ``old`` (a restarted worker makes its socket anew)."""
    with trio.fail_after(20):
        while True:
            found = _sockets(directory)
            if len(found - old) >= count:
                return found
            await trio.sleep(0.05)


async def _wait_for_log(proc: Any, text: bytes) -> None:
    with trio.fail_after(5):
        while text not in proc.stderr_data:
            await trio.sleep(0.05)


@asynccontextmanager
async def _two_workers(tmp_path: Path, config: dict[str, Any]) -> AsyncIterator[Any]:
    """``agentgw --workers 2`` with its sockets under ``tmp_path``, once both
    workers listen; yields the supervisor's process."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    args = ("-c", json.dumps(config), "--workers", "2")
    async with gateway_subprocess(*args, env=env) as (proc, _):
        await _wait_for_sockets(tmp_path, 2)
        yield proc


async def test_a_session_works_whichever_worker_a_connection_reaches(tmp_path: Path) -> None:
    config, port = await _workers_config(tmp_path)
    async with _two_workers(tmp_path, config) as proc:
        workers = _children(proc.pid)
        assert len(workers) == 2
        tokens = [await _initialize(port) for _ in range(3)]
        # Each call is a new connection, so the kernel spreads them over both
        # workers; every call must reach the worker that holds its session.
        for round_no in range(8):
            for i, token in enumerate(tokens):
                status, body = await _call(port, token, "echo", {"message": f"m{i}-{round_no}"})
                assert status == 200, body
                assert f"paged echo: m{i}-{round_no}".encode() in body
        await _wait_for_log(proc, b"worker.owner=")
        # One stdio process per session: relaying created no session elsewhere.
        started = [line for line in _read(tmp_path / "peer.log").splitlines() if "pid" in line]
        assert len(started) == 3
        grandchildren = [pid for worker in workers for pid in _children(worker)]
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0
    for pid in [*workers, *grandchildren]:
        assert not _is_running(pid)
    assert not _sockets(tmp_path), "the sockets are left behind"


async def test_a_crashed_worker_is_restarted(tmp_path: Path) -> None:
    config, port = await _workers_config(tmp_path)
    async with _two_workers(tmp_path, config) as proc:
        sockets = await _wait_for_sockets(tmp_path, 2)
        os.kill(_children(proc.pid)[0], signal.SIGKILL)
        await _wait_for_log(proc, b"restarting in")
        await _wait_for_sockets(tmp_path, 1, old=sockets)
        for _ in range(6):  # whichever worker answers, the gateway serves
            token = await _initialize(port)
            status, body = await _call(port, token, "echo", {"message": "again"})
            assert status == 200 and b"paged echo: again" in body
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0, proc.stderr_data.decode(errors="replace")


def test_workers_need_fixed_ports() -> None:
    config = mcp_config(stdio("paged", PEER))  # port 0
    done = subprocess.run(
        [sys.executable, "-m", "agentgw", "-c", json.dumps(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--workers needs fixed ports" in done.stderr


def test_a_bad_worker_count_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agentgw", "--workers", "0", "--validate-only"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "expected a number from 1 to 64" in done.stderr


async def test_http_sessions_are_served_by_their_own_worker(tmp_path: Path) -> None:
    async with serve_upstream(recording_mcp_upstream) as up:
        target = {"name": "rec", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}}
        config = mcp_config(target)
        port = await free_port()
        config["binds"][0]["port"] = port
        async with _two_workers(tmp_path, config) as proc:
            token = await _initialize(port)
            for i in range(16):  # new connections: both workers take some
                status, body = await _call(port, token, "who", {"n": i})
                assert status == 200 and b'"ok"' in body, body
            await _wait_for_log(proc, b"worker.owner=")
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await proc.wait() == 0
        lines = proc.stderr_data.decode(errors="replace").splitlines()
        calls = [line for line in lines if "mcp.method=tools/call" in line]
        assert len(calls) == 16  # served by the owner (relayed ones are logged without)
        methods = [json.loads(body).get("method") for request, body in up.seen if body]
        # One upstream session, held by the owner only: initialized once,
        # every call in it, one GET stream at most, never ended by a worker.
        assert methods.count("initialize") == 1
        assert methods.count("tools/call") == 16
        assert all(dict(r.headers)[b"mcp-session-id"] == b"s1" for r, b in up.seen[2:] if b)
        assert [r.method for r, _ in up.seen].count(b"GET") <= 1
        assert b"DELETE" not in [r.method for r, _ in up.seen]


async def _session_request(port: int, method: str, token: str) -> int:
    headers = [(b"mcp-session-id", token.encode()), (b"accept", b"text/event-stream")]
    with trio.fail_after(10):
        return (await request(port, method, "/mcp", headers=headers)).status


async def test_a_deleted_session_is_gone_on_every_worker(tmp_path: Path) -> None:
    async with serve_upstream(recording_mcp_upstream) as up:
        target = {"name": "rec", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}}
        config = mcp_config(target)
        port = await free_port()
        config["binds"][0]["port"] = port
        async with _two_workers(tmp_path, config) as proc:
            tokens = [await _initialize(port) for _ in range(4)]
            for token in tokens:  # new connections: both workers take some
                status, _ = await _call(port, token, "who", {})
                assert status == 200
                assert await _session_request(port, "DELETE", token) == 200
            # Every later request, whichever worker its connection reaches,
            # finds the session ended: a POST, a GET, a second DELETE.
            for _ in range(4):
                for token in tokens:
                    status, body = await _call(port, token, "who", {})
                    assert status == 404 and b"-32001" in body, body
                    assert await _session_request(port, "GET", token) == 404
                    assert await _session_request(port, "DELETE", token) == 404
            await _wait_for_log(proc, b"worker.owner=")
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await proc.wait() == 0
        methods = [json.loads(body).get("method") for _, body in up.seen if body]
        assert methods.count("initialize") == 4  # nothing re-initialized on a client's behalf
        assert methods.count("tools/call") == 4
        assert [r.method for r, _ in up.seen].count(b"DELETE") == 4


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    config, _ = await _workers_config(tmp_path)
    async with _two_workers(tmp_path, config) as proc:
        workers = _children(proc.pid)
        proc.kill()
        await proc.wait()
    with trio.fail_after(10):
        while any(_is_running(pid) for pid in workers):
            await trio.sleep(0.1)


async def test_an_mrtr_retry_reaches_the_worker_that_holds_its_call(tmp_path: Path) -> None:
    """A 2026-07-28 retry carries no session, only its sealed requestState:
    a retry that another worker's connection gets is relayed to the worker
    holding the call, and completes there."""
    config = mcp_config(stdio("demo", OLDER_DEMO))
    config["binds"][0]["port"] = await free_port()
    port = config["binds"][0]["port"]
    name = "test_input_required_result_elicitation"
    async with _two_workers(tmp_path, config) as proc:
        # Each request on a connection of its own: SO_REUSEPORT spreads them,
        # so some retries land on the other worker.
        for n in range(16):
            first = await mrtr_post(port, name)
            state = first["result"]["requestState"]
            answer = {"action": "accept", "content": {"name": f"user{n}"}}
            done = await mrtr_post(
                port, name, inputResponses={"user_name": answer}, requestState=state
            )
            assert done["result"]["content"][0]["text"] == f"Hello, user{n}!", done
        relayed = proc.stderr_data.count(b"worker.owner=")
        assert relayed >= 1, proc.stderr_data[-2000:]
