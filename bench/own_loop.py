"""What the scenarios with their own measurement loop share (`Scenario.run`).

How this works: `run_own` pins the harness like the wrk runner does (systems
under test on core 0, load generators and the harness on core 1), opens an
ExitStack that stops every process on the way out, and calls the scenario's
`measure` with a `Run`. `measure` starts what it needs, drives the Node load
generators (bench/loadgen.js, bench/sse_clients.js, bench/body_client.js)
through `node_json` or `NodeSession`, reads process costs from /proc, and
fills the run's facts, Markdown sections and failures. `run_own` then writes
bench/results/<date>-<scenario>.md and returns 1 on any failure (a system
that did not start or died, an error or loss rate over 0.1%), never on speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.base import (
    BENCH,
    Placement,
    RunOptions,
    choose_placement,
    git_revision,
    machine,
    now_text,
    shown,
    version,
    write_report,
)
from bench.launch import mcp_gateway_config, node, start_floor, start_gateway
from bench.systems import Service, StartError, free_port

MAX_ERROR_RATE = 0.001


class LoadError(Exception):
    """A load generator failed (not the system under test); the message says how."""


@dataclass
class Run:
    name: str
    options: RunOptions
    quick: bool
    placement: Placement
    stack: ExitStack
    facts: list[tuple[str, str]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def wants(self, system: str) -> bool:
        return self.options.systems is None or system in self.options.systems

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"error: {message}", file=sys.stderr, flush=True)

    def check_rate(self, what: str, bad: int, total: int, kind: str = "error") -> None:
        """Fail the run when `bad` of `total` exceeds 0.1%."""
        rate = bad / total if total else 1.0
        if rate > MAX_ERROR_RATE:
            self.fail(
                f"{what}: {kind} rate {rate:.2%} ({bad:,} of {total:,}) exceeds "
                f"{MAX_ERROR_RATE:.1%}"
            )

    def table(
        self, title: str, text: str, header: Sequence[str], rows: Iterable[Sequence[str]]
    ) -> None:
        """Add a Markdown table (the first column left-aligned, the others right)."""
        lines = [f"## {title}", ""]
        if text:
            lines += [text, ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" + "--:|" * (len(header) - 1))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        self.sections += [*lines, ""]


Measure = Callable[[Run], None]


def run_own(
    name: str, summary: str, method: str, options: RunOptions, quick: bool, measure: Measure
) -> int:
    """Run `measure`, print and write the report.

    Returns:
        The process exit status: 0, or 1 on a failure (never on speed).
    """
    placement = choose_placement(options.pin)
    print(f"bench {name}: {placement.describe()}", flush=True)
    run = Run(name, options, quick, placement, ExitStack())
    with run.stack:
        if placement.load_cpu is not None:
            run.stack.callback(os.sched_setaffinity, 0, os.sched_getaffinity(0))
            os.sched_setaffinity(0, {placement.load_cpu})
        try:
            measure(run)
        except (StartError, LoadError) as exc:
            run.fail(str(exc))
    facts = [
        ("when", now_text()),
        ("scenario", summary),
        ("machine", machine()),
        ("placement", placement.describe()),
        ("method", method + (" (--quick: a smoke run, not a result)" if quick else "")),
        ("node", version(["node", "--version"])),
        ("agentgw", git_revision()),
        *run.facts,
    ]
    parts = [f"# Benchmark `{name}`", "", *(f"- {k}: {v}" for k, v in facts), ""]
    parts += run.sections
    if run.failures:
        parts += ["## Failures", "", *(f"- {f}" for f in run.failures), ""]
    report = "\n".join(parts)
    print("\n" + report)
    path = write_report(options.results_dir, name, report)
    print(f"written to {shown(path)}")
    return 1 if run.failures else 0


# ------------------------------------------------------------ Node load generators


def system_service(run: Run, system: str, upstream: Service) -> Service:
    """``direct``: the upstream itself; ``floor``: bench/floor.py in front of it;
    ``gateway``: agentgw with the upstream as its one MCP target. Started for
    this run (its stop on the run's stack)."""
    if system == "direct":
        return upstream
    if system == "floor":
        service = start_floor(upstream.port, run.placement)
    else:
        port = free_port()
        config = mcp_gateway_config(port, [upstream])
        service = start_gateway("agentgw", config, port, run.placement)
    run.stack.callback(service.stop)
    return service


def _pinned(argv: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv


def node_json(script: str, args: Sequence[str], cpu: int | None, timeout_s: float) -> Any:
    """Run bench/`script` with node and return the JSON of its last line of output.

    Raises:
        LoadError: it failed, timed out or printed no JSON.
    """
    argv = _pinned([node(), str(BENCH / script), *args], cpu)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise LoadError(f"{script} did not finish in {timeout_s:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise LoadError(
            f"{script} exited with {done.returncode}: {(done.stderr or done.stdout)[-2000:]}"
        )
    return json.loads(lines[-1])


class NodeSession:
    """A Node script that answers commands on stdin with JSON lines on stdout."""

    def __init__(self, script: str, args: Sequence[str], cpu: int | None) -> None:
        argv = _pinned([node(), str(BENCH / script), *args], cpu)
        self.script = script
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._buffer = b""

    def read(self, timeout_s: float) -> Any:
        """The next JSON line.

        Raises:
            LoadError: none came in time, or the script exited.
        """
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadError(f"{self.script}: no answer in {timeout_s:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait()
                    stderr = self.proc.stderr
                    err = stderr.read().decode(errors="replace") if stderr else ""
                    raise LoadError(
                        f"{self.script} exited with {self.proc.returncode}: {err[-2000:]}"
                    )
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def command(self, line: str, timeout_s: float) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.read(timeout_s)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------ process costs


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def rss_bytes(service: Service) -> int:
    return _status_kib(service.proc.pid, "VmRSS") * 1024


def peak_rss_bytes(service: Service) -> int:
    return _status_kib(service.proc.pid, "VmHWM") * 1024


def reset_peak_rss(service: Service) -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+, as root); False if we cannot."""
    try:
        Path(f"/proc/{service.proc.pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def open_fds(service: Service) -> int:
    return len(os.listdir(f"/proc/{service.proc.pid}/fd"))


def tcp_sockets(service: Service, upstream_port: int) -> dict[str, int]:
    """The process's TCP sockets: listening, connected to `upstream_port`, and others
    (for a gateway: its clients)."""
    inodes = set()
    for fd in Path(f"/proc/{service.proc.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    counts = {"listen": 0, "upstream": 0, "clients": 0}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] not in inodes:
                    continue
                if fields[3] == "0A":
                    counts["listen"] += 1
                elif int(fields[2].rsplit(":", 1)[1], 16) == upstream_port:
                    counts["upstream"] += 1
                else:
                    counts["clients"] += 1
    return counts


def kib(n_bytes: float) -> str:
    return f"{n_bytes / 1024:,.0f} KiB"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} µs"
    if value < 1000:
        return f"{value:.2f} ms"
    return f"{value / 1000:.2f} s"
