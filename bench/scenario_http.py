"""Scenario `http`: plain HTTP POST proxying, agentgw against a direct connection and nginx."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Collection
from contextlib import ExitStack
from pathlib import Path

from bench import peers
from bench.scenarios import Placement, Scenario, Started, Target
from bench.systems import Service, StartError, free_port, start_service

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_JS = Path(__file__).with_name("upstream.js")

GATEWAY_CONFIG = """\
binds:
- port: {port}
  address: 127.0.0.1
  listeners:
  - name: bench
    routes:
    - name: upstream
      backends:
      - host: 127.0.0.1:{upstream_port}
"""


def start_http(stack: ExitStack, placement: Placement, wanted: Collection[str]) -> Started:
    upstream = _start_upstream(placement.server_cpu)
    stack.callback(upstream.stop)
    started = Started()
    if "direct" in wanted:
        started.targets.append(Target("direct", upstream.url, upstream))
    if "gateway" in wanted:
        try:
            gateway = _start_gateway(upstream.port, placement.server_cpu)
        except StartError as exc:
            started.failures.append(str(exc))
        else:
            stack.callback(gateway.stop)
            started.targets.append(Target("gateway", gateway.url, gateway))
    if "nginx" in wanted:
        try:
            nginx = peers.start_nginx(stack, upstream.port, placement.server_cpu)
        except StartError as exc:
            started.failures.append(str(exc))
        else:
            started.targets.append(Target("nginx", nginx.url, nginx))
            started.facts.append(("nginx", f"{peers.nginx_version()} passing through"))
    return started


def _start_upstream(cpu: int | None) -> Service:
    node = shutil.which("node")
    if node is None:
        raise StartError("upstream failed to start: node is not on PATH")
    port = free_port()
    return start_service("upstream", [node, str(UPSTREAM_JS), str(port)], port=port, cpu=cpu)


def _start_gateway(upstream_port: int, cpu: int | None) -> Service:
    port = free_port()
    config = GATEWAY_CONFIG.format(port=port, upstream_port=upstream_port)
    argv = [gateway_python(), "-m", "agentgw", "-c", config]
    return start_service("agentgw", argv, port=port, cpu=cpu, cwd=REPO)


def gateway_python() -> str:
    venv_python = REPO / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


SCENARIO = Scenario(
    name="http",
    summary="plain HTTP POST proxying at c=1 and c=64: agentgw vs direct to a Node upstream "
    "and vs nginx",
    systems=("direct", "nginx", "gateway"),
    concurrencies=(1, 64),
    start=start_http,
    load="POST of a ~50-byte JSON-RPC body with a unique id (bench/post.lua)",
    upstream="bench/upstream.js",
    comparisons=(("gateway", "direct"), ("gateway", "nginx"), ("nginx", "direct")),
)
