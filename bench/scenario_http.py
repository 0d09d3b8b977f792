"""Scenario `http`: plain HTTP POST proxying, agentgw against a direct connection,
the `floor` relay and nginx."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import ExitStack

from bench import peers
from bench.base import LoadTarget, Placement, Scenario, Started
from bench.launch import (
    FLOOR_FACT,
    http_gateway_config,
    start_floor,
    start_gateway,
    start_http_upstream,
)
from bench.report import AddedLatencyTarget, FairnessTarget, RatioTarget
from bench.systems import StartError, free_port


def start_http(stack: ExitStack, placement: Placement, wanted: Collection[str]) -> Started:
    upstream = start_http_upstream(placement.server_cpu)
    stack.callback(upstream.stop)
    started = Started()
    if "direct" in wanted:
        started.targets.append(LoadTarget("direct", upstream.url, upstream))
    if "floor" in wanted:
        try:
            floor = start_floor(upstream.port, placement)
        except StartError as exc:
            started.failures.append(str(exc))
        else:
            stack.callback(floor.stop)
            started.targets.append(LoadTarget("floor", floor.url, floor))
            started.facts.append(("floor", FLOOR_FACT))
    if "gateway" in wanted:
        try:
            port = free_port()
            config = http_gateway_config(port, upstream.port)
            gateway = start_gateway("agentgw", config, port, placement)
        except StartError as exc:
            started.failures.append(str(exc))
        else:
            stack.callback(gateway.stop)
            started.targets.append(LoadTarget("gateway", gateway.url, gateway))
    if "nginx" in wanted:
        try:
            nginx = peers.start_nginx(stack, upstream.port, placement.server_cpu)
        except StartError as exc:
            started.failures.append(str(exc))
        else:
            started.targets.append(LoadTarget("nginx", nginx.url, nginx))
            started.facts.append(("nginx", f"{peers.nginx_version()} passing through"))
    return started


SCENARIO = Scenario(
    name="http",
    summary="plain HTTP POST proxying at c=1 to c=256: agentgw vs direct to a Node upstream, "
    "vs the floor relay and vs nginx",
    systems=("direct", "floor", "nginx", "gateway"),
    concurrencies=(1, 32, 64, 256),
    quick_concurrencies=(1, 32),
    # At c=256 a request that waits its turn for seconds is measured (the fairness
    # target), not cut off at wrk's usual 2 s.
    request_timeout_s=10,
    start=start_http,
    load="POST of a ~50-byte JSON-RPC body with a unique id (bench/post.lua)",
    upstream="bench/upstream.js",
    comparisons=(
        ("gateway", "floor"),
        ("gateway", "direct"),
        ("gateway", "nginx"),
        ("floor", "direct"),
        ("nginx", "direct"),
    ),
    # Issue 10's targets.
    targets=(
        RatioTarget("gateway", "floor", 0.8, at=(1, 32)),
        AddedLatencyTarget("gateway", "direct", 0.35e-3, at=(1,)),
        FairnessTarget("gateway", 4.0, at=(256,)),
    ),
)
