"""MCP Inspector's CLI (``@modelcontextprotocol/inspector-cli`` 1.0.3), a
real client, through the gateway: tools, resources and prompts of two
federated targets, over Streamable HTTP and legacy SSE, with the client's
own header reaching the route's policy."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.e2e.support import run_gateway
from tests.e2e.test_mcp_gateway import DEMO, EVERYTHING, ROOT, mcp_config, stdio

INSPECTOR = ROOT / "node_modules" / ".bin" / "mcp-inspector-cli"


async def inspect(url: str, transport: str, *args: str) -> tuple[int, Any]:
    """Run the CLI once; its exit status and the JSON it printed (None if
    none). It must run from a folder whose parent has a package.json."""
    with trio.fail_after(60):
        run = await trio.run_process(
            [str(INSPECTOR), "--cli", url, "--transport", transport, *args],
            cwd=ROOT / "tests",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = run.stdout.decode().strip()
    return run.returncode, json.loads(out) if out.startswith("{") else None


def _config() -> dict[str, Any]:
    config = mcp_config(stdio("demo", DEMO), stdio("everything", [EVERYTHING, "stdio"]))
    route = config["binds"][0]["listeners"][0]["routes"][0]
    route["matches"] = [{"path": {"pathPrefix": "/mcp"}}, {"path": {"pathPrefix": "/sse"}}]
    route["policies"] = {"authorization": {"rules": ['request.headers["x-team"] == "blue"']}}
    return config


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_inspector_cli_through_the_gateway(transport: str) -> None:
    if not INSPECTOR.exists():
        pytest.skip("the npm test peers are not installed (make test installs them)")
    async with run_gateway(_config()) as (_, port):
        path = "/mcp" if transport == "http" else "/sse"
        url = f"http://127.0.0.1:{port}{path}"
        team = ("--header", "X-Team: blue")

        status, listed = await inspect(url, transport, "--method", "tools/list", *team)
        assert status == 0, listed
        names = {tool["name"] for tool in listed["tools"]}
        assert {"demo_echo", "everything_echo"} <= names, names

        status, called = await inspect(
            url,
            transport,
            "--method",
            "tools/call",
            "--tool-name",
            "everything_echo",
            "--tool-arg",
            "message=hi",
            *team,
        )
        assert status == 0 and called["content"][0]["text"] == "Echo: hi", called

        status, resources = await inspect(url, transport, "--method", "resources/list", *team)
        assert status == 0
        uris = [r["uri"] for r in resources["resources"]]
        assert any(u.startswith("demo+") for u in uris), uris
        assert any(u.startswith("everything+") for u in uris), uris

        status, prompts = await inspect(url, transport, "--method", "prompts/list", *team)
        assert status == 0
        assert "everything_simple-prompt" in {p["name"] for p in prompts["prompts"]}

        # Without the header the route's policy refuses it, and the CLI fails.
        status, refused = await inspect(url, transport, "--method", "tools/list")
        assert status != 0 and refused is None
