"""`python -m bench run --quick` as CI runs it: a smoke run, never a result.

It must pass when every system starts and answers, and fail when one does
not start. Speed never fails it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


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


def test_a_system_that_does_not_start_fails_the_run(tmp_path: Path) -> None:
    # agentgw refuses a malformed worker environment and exits at once.
    env = {**os.environ, "AGENTGW_WORKER": "not-a-worker"}
    done = _bench(tmp_path, "--scenario", "mcp", "--systems", "direct,gateway-1", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed to start" in done.stderr
