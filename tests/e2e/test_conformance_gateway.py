"""The MCP conformance suite through the gateway: in front of the demo
server (as a stdio target and as a Streamable HTTP target), and in front of
server-everything compared with server-everything directly. Every gateway
here has the default config: on 127.0.0.1 without authentication, its
DNS-rebinding protection is on without a ``dnsRebindingProtection`` key."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import trio

from tests.e2e.support import run_gateway
from tests.e2e.test_demo_conformance import NODE, SUITE, demo_process
from tests.e2e.test_mcp_gateway import EVERYTHING, mcp_config, stdio
from tests.e2e.test_mcp_transports import everything_http

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


async def run_scenario(url: str, name: str) -> tuple[int, int, str]:
    """One server scenario against ``url``: (checks passed, checks failed)."""
    with trio.fail_after(60):
        run = await trio.run_process(
            [NODE, SUITE, "server", "--url", url, "--scenario", name],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = run.stdout.decode() + run.stderr.decode()
    found = re.search(r"^Passed: (\d+)/\d+, (\d+) failed", out, re.MULTILINE)
    assert found, out[-3000:]
    return int(found[1]), int(found[2]), out[-3000:]


def _backend(config: dict[str, Any]) -> Any:
    return config["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["mcp"]


async def test_dns_rebinding_scenario_passes_through_the_default_gateway() -> None:
    async with demo_process() as demo_url:
        # The upstream passes it on its own.
        assert (await run_scenario(demo_url, "dns-rebinding-protection"))[:2] == (2, 0)
        config = mcp_config({"name": "demo", "mcp": {"host": demo_url}})
        assert "dnsRebindingProtection" not in _backend(config)
        async with run_gateway(config) as (_, port):
            url = f"http://localhost:{port}/mcp"
            passed, failed, report = await run_scenario(url, "dns-rebinding-protection")
        assert (passed, failed) == (2, 0), report
        # Turned off, the gateway's own Host reaches the upstream, whose check
        # then cannot see the client's: the evil Host gets through.
        _backend(config)["dnsRebindingProtection"] = False
        async with run_gateway(config) as (_, port):
            url = f"http://localhost:{port}/mcp"
            passed, failed, report = await run_scenario(url, "dns-rebinding-protection")
        assert (passed, failed) == (1, 1), report


async def test_conformance_through_gateway_demo_stdio(tmp_path: Path) -> None:
    scenarios = await _scenarios()
    config = mcp_config(stdio("demo", DEMO))
    async with run_gateway(config) as (_, port):
        results, report = await run_suite(f"http://localhost:{port}/mcp", tmp_path)
    assert sorted(results) == sorted(scenarios), report
    failed = [name for name, ok in results.items() if not ok]
    assert failed == [], report


async def test_conformance_through_gateway_demo_http(tmp_path: Path) -> None:
    scenarios = await _scenarios()
    async with demo_process() as demo_url:
        config = mcp_config({"name": "demo", "mcp": {"host": demo_url}})
        async with run_gateway(config) as (_, port):
            results, report = await run_suite(f"http://localhost:{port}/mcp", tmp_path)
    assert sorted(results) == sorted(scenarios), report
    failed = [name for name, ok in results.items() if not ok]
    assert failed == [], report


async def test_everything_passes_through_gateway_what_it_passes_directly(tmp_path: Path) -> None:
    async with everything_http() as ev_port:
        direct, direct_report = await run_suite(f"http://localhost:{ev_port}/mcp", tmp_path / "d")
        config = mcp_config(stdio("everything", [EVERYTHING, "stdio"]))
        async with run_gateway(config) as (_, port):
            through, report = await run_suite(f"http://localhost:{port}/mcp", tmp_path / "g")
    assert sorted(direct) == sorted(through)
    lost = [name for name, ok in direct.items() if ok and not through[name]]
    assert lost == [], report
    assert sum(direct.values()) >= 10, direct_report  # the comparison means something
