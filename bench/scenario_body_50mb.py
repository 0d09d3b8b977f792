"""Scenario `body-50mb`: one 50 MB body streamed through the plain HTTP proxy.

bench/body_upstream.js counts and discards uploads and answers downloads as
chunked streams. `direct` goes to it; `gateway` is agentgw with one route
whose backend is it (the `http` scenario's config, not MCP); `nginx` is the
pass-through peer of bench/peers.py when nginx is installed. For each round,
direction and system, bench/body_client.js moves one body; around it the
harness resets the measured process's peak RSS (/proc/<pid>/clear_refs) and
reads its CPU time, so the peak RSS growth shows whether it buffered the body.
"""

from __future__ import annotations

import shutil
from typing import Any

from bench import own_loop, peers
from bench.base import BENCH, RunOptions, Scenario
from bench.launch import http_gateway_config, node, start_gateway
from bench.own_loop import Run, mib
from bench.systems import Service, StartError, free_port, start_service

BODY_BYTES = 50 * 10**6
DIRECTIONS = ("upload", "download")
TIMEOUT_S = 300


def run(options: RunOptions, quick: bool) -> int:
    method = (
        f"{options.rounds} round(s); each round moves one {BODY_BYTES // 10**6} MB body per "
        "direction through every system in turn (fresh connection each); peak RSS reset "
        "before each transfer"
    )
    return own_loop.run_own("body-50mb", SCENARIO.summary, method, options, quick, _measure)


def _measure(run: Run) -> None:
    port = free_port()
    argv = [node(), str(BENCH / "body_upstream.js"), str(port)]
    upstream = start_service("upstream", argv, port=port, cpu=run.placement.server_cpu)
    run.stack.callback(upstream.stop)
    systems: dict[str, Service] = {}
    if run.wants("direct"):
        systems["direct"] = upstream
    if run.wants("gateway"):
        gw_port = free_port()
        config = http_gateway_config(gw_port, upstream.port)
        gateway = start_gateway("agentgw", config, gw_port, run.placement)
        run.stack.callback(gateway.stop)
        systems["gateway"] = gateway
    if run.wants("nginx"):
        nginx = _start_nginx(run, upstream.port)
        if nginx is not None:
            systems["nginx"] = nginx
    run.facts += [
        ("load", "bench/body_client.js (node:http, 64 KiB writes, backpressure kept)"),
        ("upstream", "bench/body_upstream.js"),
    ]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_no in range(1, run.options.rounds + 1):
        for direction in DIRECTIONS:
            for system, service in systems.items():
                if not service.is_running():
                    continue
                r = _transfer(run, service, direction)
                results.setdefault((direction, system), []).append(r)
                print(
                    f"round {round_no} {direction:<8} {system:<8} {r['mb_per_s']:7.1f} MB/s "
                    f"{r['seconds']:6.2f} s  status {r['status']} ok {r['ok']}  CPU "
                    f"{r['cpu_s']:.2f} s  RSS growth {mib(r['rss_growth'])}",
                    flush=True,
                )
    rows = []
    for (direction, system), rs in results.items():
        ranked = sorted(rs, key=lambda r: r["mb_per_s"])
        m = ranked[(len(ranked) - 1) // 2]
        bad = [r for r in rs if not r["ok"]]
        if bad and system == "nginx" and all(r["status"] == 413 for r in bad):
            rows.append([direction, system, "413: nginx's client_max_body_size (1 MiB)"])
            continue
        if bad:
            run.fail(f"{system} {direction}: {len(bad)} of {len(rs)} transfers failed: {bad[0]}")
        rows.append(
            [
                direction,
                system,
                f"{m['mb_per_s']:,.0f}",
                f"{ranked[0]['mb_per_s']:,.0f}..{ranked[-1]['mb_per_s']:,.0f}",
                f"{m['seconds']:.2f} s",
                f"{m['cpu_s']:.2f}",
                mib(m["rss_before"]),
                mib(m["peak_rss"]),
                mib(max(r["rss_growth"] for r in rs)),
                f"{len(rs) - len(bad)} of {len(rs)}",
            ]
        )
    run.table(
        "50 MB through the proxy",
        "Median round by MB/s (10^6 bytes per second, from the first byte sent to the last "
        "received); range min..max over rounds. CPU s and RSS are the measured system's own "
        "process: for `direct` the upstream, for `gateway` agentgw alone, for `nginx` nginx "
        "alone. Peak RSS is VmHWM after the transfer, reset to the current RSS just before "
        "it; growth is peak minus RSS before (the largest over rounds).",
        [
            "direction",
            "system",
            "MB/s",
            "MB/s range",
            "time",
            "CPU s",
            "RSS before",
            "peak RSS",
            "peak growth",
            "ok",
        ],
        rows,
    )


def _start_nginx(run: Run, upstream_port: int) -> Service | None:
    if shutil.which("nginx") is None and shutil.which("/usr/sbin/nginx") is None:
        run.facts.append(("nginx", "skipped: not installed"))
        return None
    try:
        service = peers.start_nginx(run.stack, upstream_port, run.placement.server_cpu)
    except StartError as exc:
        run.fail(str(exc))
        return None
    run.facts.append(("nginx", f"{peers.nginx_version()}, config of bench/peers.py"))
    return service


def _transfer(run: Run, service: Service, direction: str) -> dict[str, Any]:
    can_reset = own_loop.reset_peak_rss(service)
    rss_before = own_loop.rss_bytes(service)
    if not can_reset:
        run.fail(f"cannot reset the peak RSS of {service.name} (/proc/<pid>/clear_refs)")
    cpu_before = service.cpu_seconds()
    args = [direction, f"http://127.0.0.1:{service.port}/", str(BODY_BYTES)]
    cpu = run.placement.load_cpu
    r: dict[str, Any] = own_loop.node_json("body_client.js", args, cpu, TIMEOUT_S)
    r["cpu_s"] = service.cpu_seconds() - cpu_before
    r["rss_before"] = rss_before
    r["peak_rss"] = own_loop.peak_rss_bytes(service) if service.is_running() else 0
    r["rss_growth"] = max(0, r["peak_rss"] - rss_before)
    if not service.is_running():
        run.fail(f"{service.name} exited during the benchmark: {service.output_tail()}")
    return r


SCENARIO = Scenario(
    name="body-50mb",
    summary=(
        "a 50 MB body up (POST) and down (chunked GET) through the plain HTTP proxy: "
        "agentgw vs direct vs nginx"
    ),
    systems=("direct", "gateway", "nginx"),
    run=run,
)
