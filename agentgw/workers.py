"""``agentgw --workers N``: N processes sharing the same ports.

How this works: the parent process serves nothing. It makes a private
directory and, unless the config names one, a session key, then starts N
children (``python -m agentgw`` with the same arguments) and tells each its
index, the directory and the key through the environment. Every child binds
the config's ports with SO_REUSEPORT, so the kernel spreads new connections
across them, and also listens on a Unix socket per bind (named by its port)
in the directory.

An MCP session lives in the worker that created it: stdio children, GET
streams and legacy SSE streams cannot move. The worker's index is the
suffix of the session's id (``<random>.w<index>``), which travels inside the
sealed ``Mcp-Session-Id`` (and as the legacy ``sessionId``). A worker that
gets a request for another worker's session relays it, unchanged and
streaming, to that worker's Unix socket; the owner runs the whole policy
pipeline. Every request of a session goes there, so the owner alone decides
whether the session still exists (a DELETE at any worker ends it for all).
If the owner is gone (it crashed and is being restarted), the request is
served here: HTTP-only sessions resume, others get 404.

The parent forwards SIGTERM/SIGINT to the children (so each drains) and
SIGHUP (so each reloads its config, ``agentgw.reload``), restarts
a child that dies on its own with a backoff, and gives up and stops every
child when one keeps crashing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import trio

logger = logging.getLogger(__name__)

ENV_WORKER = "AGENTGW_WORKER"  # "<index>/<count>"
ENV_DIR = "AGENTGW_WORKER_DIR"
ENV_KEY = "AGENTGW_WORKER_SESSION_KEY"
ENV_METRICS = "PROMETHEUS_MULTIPROC_DIR"
# Set by a relaying worker; trusted only on the workers' own Unix sockets:
# the client's address, and what its TLS connection established (the
# listener chosen by SNI, the verified client certificate).
CLIENT_HEADER = b"x-agentgw-worker-client"
TLS_HEADER = b"x-agentgw-worker-tls"
MAX_WORKERS = 64
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
CRASH_WINDOW = 60.0
MAX_CRASHES = 5


@attrs.frozen
class WorkerSpec:
    """Which worker this process is, and where its siblings listen."""

    index: int
    count: int
    directory: Path
    session_key: str | None = attrs.field(default=None, repr=False)

    def socket_path(self, index: int, port: int) -> str:
        """Where worker ``index`` takes relayed requests for the bind on ``port``."""
        return str(self.directory / f"w{index}-b{port}.sock")

    def admin_socket_path(self, index: int) -> str:
        return str(self.directory / f"w{index}-admin.sock")

    @classmethod
    def from_env(cls) -> WorkerSpec | None:
        """The spec the parent put in the environment, or None (one process).

        Raises:
            ValueError: the variables are malformed.
        """
        text = os.environ.get(ENV_WORKER)
        if not text:
            return None
        index_text, _, count_text = text.partition("/")
        index, count = int(index_text), int(count_text)
        if not 0 <= index < count <= MAX_WORKERS:
            raise ValueError(f"{ENV_WORKER}={text!r}: expected <index>/<count>")
        directory = os.environ.get(ENV_DIR)
        if not directory:
            raise ValueError(f"{ENV_WORKER} is set but {ENV_DIR} is not")
        return cls(index, count, Path(directory), os.environ.get(ENV_KEY) or None)


def session_suffix(index: int) -> str:
    return f".w{index}"


def owner_of_sid(sid: str, count: int) -> int | None:
    """The worker index a session id names, or None."""
    _, dot, tail = sid.rpartition(".w")
    if not dot or not tail.isdigit():
        return None
    index = int(tail)
    return index if index < count else None


async def open_unix_listener(path: str) -> trio.SocketListener:
    # A crashed predecessor's socket file is in the way.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def stop_when_orphaned(shutdown: Callable[[], None], interval: float = 1.0) -> None:
    """In a worker: call ``shutdown`` (a drain) if the supervisor dies
    without stopping us (it was killed with SIGKILL, say)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await trio.sleep(interval)
    print("agentgw: the supervisor is gone, draining", file=sys.stderr, flush=True)
    shutdown()


# ---------------------------------------------------------------- the parent


def supervise(argv: Sequence[str], count: int, session_key: str | None) -> int:
    """Run ``count`` workers with ``argv`` (the CLI's arguments without
    ``--workers``) until they all exit; the process's exit status."""
    directory = Path(tempfile.mkdtemp(prefix="agentgw-"))
    os.chmod(directory, 0o700)
    env = dict(os.environ)
    env[ENV_DIR] = str(directory)
    env[ENV_KEY] = session_key or secrets.token_hex(32)
    # prometheus-client's multiprocess mode: a scrape of any worker sees all.
    metrics = directory / "metrics"
    metrics.mkdir()
    env[ENV_METRICS] = str(metrics)
    try:
        return trio.run(_supervise, list(argv), count, env)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@attrs.define(eq=False)
class _Supervisor:
    argv: list[str]
    env: dict[str, str]
    count: int
    stopping: bool = False
    failed: bool = False
    procs: dict[int, trio.Process] = attrs.field(factory=dict)

    def signal_all(self, signum: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signum)

    async def run_worker(self, index: int) -> None:
        crashes: list[float] = []
        while True:
            env = {**self.env, ENV_WORKER: f"{index}/{self.count}"}
            command = [sys.executable, "-m", "agentgw", *self.argv]
            # Shielded: a worker is stopped by its signal, never left behind.
            with trio.CancelScope(shield=True):
                proc = await trio.lowlevel.open_process(command, env=env)
                self.procs[index] = proc
                if self.stopping:  # the signal came while it started
                    proc.send_signal(signal.SIGTERM)
                code = await proc.wait()
                _forget_metrics(self.env[ENV_METRICS], proc.pid)
            if self.stopping:
                # Killed by our own stop signal: it had not set up its handler
                # yet, so it had nothing to drain.
                if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                    self.failed = True
                return
            now = time.monotonic()
            crashes = [t for t in crashes if now - t < CRASH_WINDOW] + [now]
            if len(crashes) >= MAX_CRASHES:
                print(
                    f"agentgw: worker {index} exited {len(crashes)} times in "
                    f"{CRASH_WINDOW:.0f} s (last with {code}); stopping",
                    file=sys.stderr,
                    flush=True,
                )
                self.failed = self.stopping = True
                self.signal_all(signal.SIGTERM)
                return
            delay = RESTART_BACKOFF[min(len(crashes), len(RESTART_BACKOFF)) - 1]
            print(
                f"agentgw: worker {index} exited with {code}; restarting in {delay:g} s",
                file=sys.stderr,
                flush=True,
            )
            await trio.sleep(delay)
            if self.stopping:
                return


def _forget_metrics(directory: str, pid: int) -> None:
    """A worker is gone: its gauges no longer count (its counters do)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


async def _supervise(argv: list[str], count: int, env: dict[str, str]) -> int:
    sup = _Supervisor(argv, env, count)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as outer:

            async def forward_signals() -> None:
                async for signum in signals:
                    if signum != signal.SIGHUP:
                        sup.stopping = True
                    sup.signal_all(signum)

            outer.start_soon(forward_signals)
            async with trio.open_nursery() as workers:
                for index in range(count):
                    workers.start_soon(sup.run_worker, index)
            outer.cancel_scope.cancel()
    return 1 if sup.failed else 0
