"""wrk: find or install it, run it, and parse what it prints."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

POST_SCRIPT = Path(__file__).with_name("post.lua")

# wrk prints times as a number and one of these units (see format_time in wrk's units.c).
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


class WrkError(Exception):
    pass


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    requests_per_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float
    socket_errors: int
    non_2xx: int
    # Counted by the Lua script, where it checks more than wrk does (bench/mcp_call.lua).
    unexpected: int
    cpu_s: float  # wrk's own CPU time: shows whether the load generator was the limit
    # Every non-zero error count by kind (connect, read, write, timeout, non-2xx,
    # unexpected), largest first: what the report and a failure name.
    error_kinds: tuple[tuple[str, int], ...] = ()

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx + self.unexpected

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0


def ensure_wrk() -> str:
    """Return the path of wrk, installing the Debian package when we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if not can_apt_install():
        raise WrkError("wrk is not installed: run `sudo apt-get install -y wrk` and try again")
    print("wrk not found: installing it with apt-get", flush=True)
    if not apt_install("wrk"):
        raise WrkError("`apt-get install -y wrk` failed: install wrk by hand and try again")
    found = shutil.which("wrk")
    if not found:
        raise WrkError("wrk is still not on PATH after apt-get install")
    return found


def can_apt_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(package: str) -> bool:
    """`apt-get install -y <package>`, after `apt-get update` if the first try fails;
    prints what failed."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", package]
    if _run_quiet(install, env) == 0:
        return True
    # A fresh machine has no package lists yet.
    return _run_quiet(["apt-get", "update", "-q"], env) == 0 and _run_quiet(install, env) == 0


def _run_quiet(argv: list[str], env: dict[str, str]) -> int:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"$ {' '.join(argv)}\n{done.stderr.strip()[-2000:]}", flush=True)
    return done.returncode


def wrk_command(
    wrk: str,
    url: str,
    *,
    connections: int,
    threads: int,
    duration_s: int,
    cpu: int | None,
    script: Path = POST_SCRIPT,
    timeout_s: int = 2,
) -> list[str]:
    """The argv of one wrk run, pinned to `cpu` if it is not None.

    Args:
        timeout_s: wrk's request timeout: a request unanswered for that long is a
            timeout error.
    """
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        f"{timeout_s}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    return argv


def run_wrk(argv: list[str], *, duration_s: int, env: Mapping[str, str] | None = None) -> WrkResult:
    """Run wrk, with `env` added to the environment (its Lua script reads it)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration_s + 30,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {duration_s + 30} s")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-1000:]
        raise WrkError(f"wrk exited with {done.returncode}: {output}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_wrk(done.stdout, cpu_s=cpu_s)


def parse_wrk(text: str, *, cpu_s: float = 0.0) -> WrkResult:
    """Parse the output of `wrk --latency`.

    Raises:
        WrkError: a line we rely on is missing.
    """
    total = _search(r"(\d+) requests in " + _TIME, text, "requests in")
    latency = dict(re.findall(r"^\s*(\d+)%\s+([\d.]+(?:us|ms|s|m|h))\s*$", text, re.M))
    if not {"50", "90", "99"} <= latency.keys():
        raise WrkError(f"no latency distribution in wrk output:\n{text}")
    # The thread stats line: "Latency  <avg>  <stdev>  <max>  <+/- stdev>".
    stats = _search(r"(?m)^\s*Latency\s+\S+\s+\S+\s+([\d.]+(?:us|ms|s|m|h))", text, "Latency")
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    unexpected = re.search(r"^Unexpected responses: (\d+)", text, re.M)
    kinds = {}
    if socket:
        kinds = dict(zip(("connect", "read", "write", "timeout"), socket.groups(), strict=True))
    kinds["non-2xx"] = non_2xx.group(1) if non_2xx else "0"
    kinds["unexpected"] = unexpected.group(1) if unexpected else "0"
    counts = sorted(((k, int(n)) for k, n in kinds.items() if int(n)), key=lambda kv: -kv[1])
    return WrkResult(
        requests=int(total.group(1)),
        duration_s=_seconds(total.group(2), total.group(3)),
        requests_per_s=float(_search(r"Requests/sec:\s+([\d.]+)", text, "Requests/sec").group(1)),
        p50_s=_parse_time(latency["50"]),
        p90_s=_parse_time(latency["90"]),
        p99_s=_parse_time(latency["99"]),
        max_s=_parse_time(stats.group(1)),
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        unexpected=int(unexpected.group(1)) if unexpected else 0,
        cpu_s=cpu_s,
        error_kinds=tuple(counts),
    )


def _search(pattern: str, text: str, what: str) -> re.Match[str]:
    found = re.search(pattern, text)
    if found is None:
        raise WrkError(f"no {what!r} line in wrk output:\n{text}")
    return found


def _parse_time(value: str) -> float:
    found = re.fullmatch(_TIME, value)
    if found is None:
        raise WrkError(f"not a wrk time: {value!r}")
    return _seconds(found.group(1), found.group(2))


def _seconds(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS[unit]
