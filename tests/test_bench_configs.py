"""The configs bench/ gives agentgw load as agentgw reads them, and keep each
gateway's readiness, stats and admin servers on ports of its own."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from agentgw import parse_config
from bench.certs import make_certs
from bench.launch import (
    MANAGEMENT_KEYS,
    http_gateway_config,
    mcp_gateway_config,
    metric_sum,
    stdio_gateway_config,
)
from bench.systems import Service


def _upstream(name: str, port: int, *, tls: bool = False) -> Service:
    # A Service only as the configs read it (name, port, scheme): no process.
    proc: subprocess.Popen[bytes] = None  # type: ignore[assignment]
    context = ssl.create_default_context() if tls else None
    return Service(f"upstream-{name}", port, proc, Path("/nonexistent"), tls=context)


def test_every_gateway_gets_its_own_loopback_management_ports() -> None:
    configs = [
        parse_config(http_gateway_config(8001, 9001)),
        parse_config(mcp_gateway_config(8002, [_upstream("a", 9002)])),
        parse_config(stdio_gateway_config(8003, ["node", "server.js", "--stdio"])),
    ]
    ports = []
    for config in configs:
        addresses = [
            config.config.readiness_addr,
            config.config.stats_addr,
            config.config.admin_addr,
        ]
        for address in addresses:
            assert address is not None
            host, _, port = address.rpartition(":")
            assert host == "127.0.0.1"
            ports.append(int(port))
    assert len(set(ports)) == len(ports) == 3 * len(MANAGEMENT_KEYS)


def test_settings_replace_a_management_address_and_add_keys_once() -> None:
    settings = {
        "statsAddr": "off",
        "http": {"maxConnections": 15000},
        "tracing": {
            "otlpEndpoint": "http://127.0.0.1:4318/v1/traces",
            "otlpProtocol": "http",
            "randomSampling": 1.0,
        },
    }
    text = mcp_gateway_config(8000, [_upstream("a", 9000)], settings=settings)
    assert text.count("\nconfig:") == 1
    config = parse_config(text).config
    assert config.stats_addr == "off"
    assert config.admin_addr is not None and config.admin_addr.startswith("127.0.0.1:")
    assert config.http.max_connections == 15000
    assert config.tracing is not None and config.tracing.random_sampling == 1.0


def test_the_tls_config_serves_https_and_trusts_the_runs_ca(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    policies = {"backendTLS": {"root": str(certs.ca)}}
    text = mcp_gateway_config(
        8000, [_upstream("tls", 9000, tls=True)], policies, settings=None, tls=certs
    )
    # Loading reads and checks the certificate, its key and the CA file.
    config = parse_config(text)
    listener = config.binds[0].listeners[0]
    assert listener.protocol == "HTTPS"
    assert listener.tls is not None
    assert "host: https://127.0.0.1:9000/mcp" in text
    route = listener.routes[0]
    assert route.policies is not None and route.policies.backend_tls is not None


def test_metric_sum_adds_every_label_set_of_one_name() -> None:
    text = (
        "# TYPE agentgateway_requests_total counter\n"
        'agentgateway_requests_total{route="mcp",status="200"} 7.0\n'
        'agentgateway_requests_total{route="mcp",status="202"} 1.0\n'
        "agentgateway_requests_total_other 100.0\n"
        "agentgateway_requests 50.0\n"
    )
    assert metric_sum(text, "agentgateway_requests_total") == 8.0
    assert metric_sum(text, "agentgw_absent") == 0.0
