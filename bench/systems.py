"""Processes under test: start one, wait until it answers HTTP, read its costs, stop it."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartError(Exception):
    """A system under test did not start; the message names it and ends with its output."""


@dataclass(eq=False)
class Service:
    """A process under test. Its cost (CPU, RSS) is that of the process and of
    every process it started (workers), less those whose command line holds one
    of `cost_excludes` (a stdio upstream it spawned), and theirs."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    cost_excludes: tuple[str, ...] = ()
    tls: ssl.SSLContext | None = None  # it serves HTTPS; a client trusts it with this

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    def is_running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything the process printed so far ("" when the log is gone)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def output_tail(self, max_lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        lines = text.strip().splitlines()[-max_lines:]
        return "\n".join(lines) if lines else "(no output)"

    def first_exception(self) -> str | None:
        """The first `SomethingError: ...` line of its output: in a Trio exception
        group's long traceback, usually the cause."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        found = re.search(r"^[\s|+]*((?:\w+\.)*\w*(?:Error|Exception): .*)$", text, re.M)
        return found.group(1).strip() if found else None

    def cost_pids(self) -> list[int]:
        """The process and its descendants, less the excluded ones and theirs."""
        return self._tree(exclude=True)

    def _tree(self, *, exclude: bool) -> list[int]:
        """The process first, then its descendants."""
        children: dict[int, list[int]] = {}
        for pid, stat in _proc_stats():
            children.setdefault(int(stat[1]), []).append(pid)
        pids, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            if exclude and pid != self.proc.pid and self._is_excluded(pid):
                continue
            pids.append(pid)
            todo += children.get(pid, [])
        return pids

    def _is_excluded(self, pid: int) -> bool:
        if not self.cost_excludes:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return True  # gone: nothing to count
        return any(marker in cmdline for marker in self.cost_excludes)

    def cpu_seconds(self) -> float:
        """utime + stime of its processes (see the class), all their threads included."""
        total = 0
        for pid in self.cost_pids():
            with contextlib.suppress(OSError):
                fields = _stat_fields(Path(f"/proc/{pid}/stat").read_text())
                total += int(fields[11]) + int(fields[12])
        return total / _CLOCK_TICKS

    def peak_rss_bytes(self) -> int:
        """The sum of the peak RSS (VmHWM) of its processes."""
        total, found = 0, False
        for pid in self.cost_pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        found = True
        if not found:
            raise RuntimeError(f"no VmHWM for pid {self.proc.pid}")
        return total

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 10 s, and remove the log.

        Descendants that left the group (a stdio server started in a session of
        its own) get SIGKILL too, if they outlive it."""
        strays = self._tree(exclude=False)[1:]
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            # Longer than agentgw's default drain deadline (5 s).
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # Anything the process left behind in its group goes too.
        _signal_group(self.proc.pid, signal.SIGKILL)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def kill(self) -> None:
        """SIGKILL the process group at once, as a crash would end it, and remove the log."""
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def _stat_fields(stat: str) -> list[str]:
    # The command name may hold spaces and parentheses: split after the last ')'.
    # fields[0] is the state, [1] the parent pid, [11] utime, [12] stime.
    return stat[stat.rindex(")") + 2 :].split()


def _proc_stats() -> list[tuple[int, list[str]]]:
    stats = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                stats.append((int(entry.name), _stat_fields((entry / "stat").read_text())))
    return stats


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_service(
    name: str,
    argv: list[str],
    *,
    port: int,
    cpu: int | None,
    cwd: Path | None = None,
    ready_timeout_s: float = 20.0,
    cost_excludes: tuple[str, ...] = (),
    tls: ssl.SSLContext | None = None,
) -> Service:
    """Start `argv` in its own process group and wait until it answers HTTP on `port`.

    Args:
        cost_excludes: see `Service`.
        tls: it serves HTTPS, and this client context trusts its certificate.

    Raises:
        StartError: it exited or did not answer in time; the process is stopped.
    """
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    fd, log_name = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    service = Service(
        name=name,
        port=port,
        proc=proc,
        log_path=Path(log_name),
        cost_excludes=cost_excludes,
        tls=tls,
    )
    try:
        _wait_ready(service, ready_timeout_s)
    except BaseException:
        service.stop()
        raise
    return service


def _wait_ready(service: Service, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.is_running():
            raise StartError(f"{service.name} failed to start: {service.output_tail()}")
        if _answers_http(service.port, service.tls):
            return
        time.sleep(0.05)
    raise StartError(
        f"{service.name} failed to start: no HTTP answer on port {service.port} "
        f"after {timeout_s:.0f} s: {service.output_tail()}"
    )


def _answers_http(port: int, tls: ssl.SSLContext | None) -> bool:
    """A TCP connect (and a TLS handshake with `tls`), then a GET that gets any status back."""
    conn = (
        http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        if tls is None
        else http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=tls)
    )
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
