"""`python -m bench run --quick` as CI runs it: a smoke run, never a result.

It must pass when every system starts and answers, and fail when one does
not start. Speed never fails it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _bench(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--quick",
            "--duration",
            "1",
            "--results",
            str(tmp_path),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_quick_mcp_run_passes_and_writes_its_report(tmp_path: Path) -> None:
    done = _bench(tmp_path, "--scenario", "mcp", "--systems", "direct,floor,gateway-1")
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = tmp_path.glob("*-mcp.md")
    text = report.read_text()
    assert "| gateway-1 |" in text and "| direct |" in text and "| floor |" in text
    # agentgw's ratio to the floor relay, and issue 10's targets with a verdict.
    assert "## `gateway-1` against `floor`" in text
    assert "| gateway-1/floor req/s | at least 0.65 at c=32 |" in text


def test_quick_run_reports_what_metrics_tracing_and_tls_cost(tmp_path: Path) -> None:
    systems = "gateway-1,gateway-1-nometrics,gateway-1-tracing,gateway-1-tls"
    done = _bench(tmp_path, "--scenario", "mcp", "--systems", systems)
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = tmp_path.glob("*-mcp.md")
    text = report.read_text()
    for system in systems.split(","):
        assert f"| {system} |" in text
    # The settings were in force: metrics counted the checked calls, the sink got
    # a span for every request agentgw counted, the sessions spoke TLS.
    assert "metrics on: agentgateway_requests_total at http://127.0.0.1:" in text
    assert re.search(r"spans of gateway-1-tracing: ([\d,]+) server spans for the \1 requests", text)
    assert re.search(r"TLS with agentgw: TLSv1\.[23] \S+; with the upstream: TLSv1\.[23]", text)
    # The cost of each over gateway-1 (or of metrics over none), and issue 13's target.
    assert "## What `gateway-1` costs over `gateway-1-nometrics`" in text
    assert "## What `gateway-1-tracing` costs over `gateway-1`" in text
    assert "## What `gateway-1-tls` costs over `gateway-1`" in text
    assert "| gateway-1/gateway-1-nometrics req/s | at least 0.95 |" in text


def test_a_system_that_does_not_start_fails_the_run(tmp_path: Path) -> None:
    # agentgw refuses a malformed worker environment and exits at once.
    env = {**os.environ, "AGENTGW_WORKER": "not-a-worker"}
    done = _bench(tmp_path, "--scenario", "mcp", "--systems", "direct,gateway-1", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed to start" in done.stderr
