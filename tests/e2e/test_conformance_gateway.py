"""The MCP conformance suite through the gateway: in front of the demo
server (as a stdio target and as a Streamable HTTP target), and in front of
server-everything compared with server-everything directly."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import trio

from tests.e2e.test_demo_conformance import NODE, SUITE, demo_process
from tests.e2e.test_mcp_gateway import EVERYTHING, mcp_config, stdio
from tests.e2e.test_mcp_transports import everything_http
from tests.support import run_gateway

DEMO = [sys.executable, "-m", "agentgw.demo", "--log-level", "warning"]
RESULT = re.compile(r"^([✓✗]) (\S+): (\d+) passed, (\d+) failed$", re.MULTILINE)


async def run_suite(url: str, tmp_path: Path, *extra: str) -> tuple[dict[str, bool], str]:
    """Run every server scenario against ``url``: scenario -> passed."""
    with trio.fail_after(120):
        run = await trio.run_process(
            [NODE, SUITE, "server", "--url", url, "--suite", "all", "-o", tmp_path, *extra],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = run.stdout.decode()
    results = {name: mark == "✓" for mark, name, _, _ in RESULT.findall(out)}
    assert results, out[-3000:] + run.stderr.decode()[-2000:]
    return results, out[-4000:]


async def _scenarios() -> list[str]:
    listed = await trio.run_process([NODE, SUITE, "list", "--server"], capture_stdout=True)
    return re.findall(r"^  - (\S+)", listed.stdout.decode(), re.MULTILINE)


def _protected(config: dict[str, Any]) -> dict[str, Any]:
    backend = config["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["mcp"]
    backend["dnsRebindingProtection"] = True
    return config


async def test_conformance_through_gateway_demo_stdio(tmp_path: Path) -> None:
    scenarios = await _scenarios()
    config = _protected(mcp_config(stdio("demo", DEMO)))
    async with run_gateway(config) as (_, port):
        results, report = await run_suite(f"http://localhost:{port}/mcp", tmp_path)
    assert sorted(results) == sorted(scenarios), report
    failed = [name for name, ok in results.items() if not ok]
    assert failed == [], report


async def test_conformance_through_gateway_demo_http(tmp_path: Path) -> None:
    scenarios = await _scenarios()
    async with demo_process() as demo_url:
        config = _protected(mcp_config({"name": "demo", "mcp": {"host": demo_url}}))
        async with run_gateway(config) as (_, port):
            results, report = await run_suite(f"http://localhost:{port}/mcp", tmp_path)
    assert sorted(results) == sorted(scenarios), report
    failed = [name for name, ok in results.items() if not ok]
    assert failed == [], report


async def test_everything_passes_through_gateway_what_it_passes_directly(tmp_path: Path) -> None:
    async with everything_http() as ev_port:
        direct, direct_report = await run_suite(f"http://localhost:{ev_port}/mcp", tmp_path / "d")
        config = _protected(mcp_config(stdio("everything", [EVERYTHING, "stdio"])))
        async with run_gateway(config) as (_, port):
            through, report = await run_suite(f"http://localhost:{port}/mcp", tmp_path / "g")
    assert sorted(direct) == sorted(through)
    lost = [name for name, ok in direct.items() if ok and not through[name]]
    assert lost == [], report
    assert sum(direct.values()) >= 10, direct_report  # the comparison means something
