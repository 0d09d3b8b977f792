"""An MCP server as a child process: newline-delimited JSON on its stdio.

How this works: the child runs in its own process group, with pipes for
stdin, stdout and stderr. One task reads stdout line by line into the inbox
(a line over ``MAX_LINE`` is refused and logged, and so is a line that is not
JSON-RPC), another logs stderr line by line. When stdout ends, the child's
exit code closes the inbox. Closing the transport closes stdin and gives the
child ``EXIT_GRACE`` seconds to exit, then terminates it, then kills it; what
is left of its process group (a grandchild ``npx`` started) is killed too.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from agentgw.config.model import StdioTarget
from agentgw.errors import UpstreamUnavailable
from agentgw.upstream.mcp._common import (
    Inbox,
    Message,
    TransportClosed,
    decode,
    encode,
    open_task_nursery,
    printable,
)

logger = logging.getLogger(__name__)
stderr_logger = logging.getLogger("agentgw.upstream.stdio")

MAX_LINE = 4 * 1024 * 1024
MAX_STDERR_LINE = 64 * 1024
EXIT_GRACE = 2.0
READ_SIZE = 65536


@attrs.define(eq=False)
class StdioTransport:
    target: str
    process: trio.Process
    inbox: Inbox = attrs.field(factory=Inbox.create)
    log_prefix: str = ""
    session_id: str | None = None
    keep_upstream_session: bool = False  # (no upstream session to keep)
    _send_lock: trio.Lock = attrs.field(factory=trio.Lock)

    def __repr__(self) -> str:
        return f"<StdioTransport {self.target} pid={self.process.pid} {self.inbox!r}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    async def send(
        self,
        message: Message,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.inbox.check_open()
        stdin = self.process.stdin
        assert stdin is not None
        data = encode(message) + b"\n"
        async with self._send_lock:
            try:
                await stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.inbox.check_open()
                raise TransportClosed(f"stdio target {self.target} stopped reading its stdin")

    async def receive(self) -> Message:
        return await self.inbox.get()

    # ------------------------------------------------------------ readers

    async def read_stdout(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            await _read_lines(stdout, MAX_LINE, self._on_line, self._on_long_line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if self.inbox.is_closed:
            return
        with trio.move_on_after(EXIT_GRACE):
            await self.process.wait()
        self.inbox.close(self._exit_reason())

    def _exit_reason(self) -> str:
        code = self.process.returncode
        if code is None:
            return f"stdio target {self.target} closed its stdout"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"stdio target {self.target} exited with code {code} ({name})"
        return f"stdio target {self.target} exited with code {code}"

    async def _on_line(self, line: bytes) -> None:
        line = line.strip()
        if not line:
            return
        try:
            messages = decode(line)
        except ValueError:
            logger.warning(
                "%sstdio target %s wrote a line that is not JSON-RPC: %s",
                self.log_prefix,
                self.target,
                printable(line, 200),
            )
            return
        for message in messages:
            if not await self.inbox.put(message):
                return

    def _on_long_line(self, size: int) -> None:
        logger.warning(
            "%sstdio target %s wrote a line longer than %d bytes: refused",
            self.log_prefix,
            self.target,
            MAX_LINE,
        )

    async def read_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None

        async def log_line(line: bytes) -> None:
            line = line.rstrip(b"\r")
            if line:
                stderr_logger.info("%s[%s] %s", self.log_prefix, self.target, printable(line))

        def log_truncated(size: int) -> None:
            stderr_logger.info(
                "%s[%s] (a line longer than %d bytes)", self.log_prefix, self.target, size
            )

        try:
            await _read_lines(stderr, MAX_STDERR_LINE, log_line, log_truncated)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # ------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Stop the child: close stdin, wait, terminate, wait, kill. Bounded
        by twice ``EXIT_GRACE`` plus the kill."""
        self.inbox.close(f"stdio target {self.target} closed")
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        with trio.move_on_after(EXIT_GRACE):
            await self.process.wait()
        if self.process.returncode is None:
            logger.info("%sstdio target %s: terminating", self.log_prefix, self.target)
            self._signal_group(signal.SIGTERM)
            with trio.move_on_after(EXIT_GRACE):
                await self.process.wait()
        if self.process.returncode is None:
            logger.warning("%sstdio target %s: killing", self.log_prefix, self.target)
            self._signal_group(signal.SIGKILL)
            await self.process.wait()
        # Whatever the child left behind in its group is orphaned now.
        self._signal_group(signal.SIGKILL)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                await pipe.aclose()

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


async def _read_lines(
    stream: trio.abc.ReceiveStream,
    limit: int,
    on_line: Callable[[bytes], Awaitable[None]],
    on_long_line: Callable[[int], None],
) -> None:
    """Call ``on_line`` for each line (without its newline); a line longer
    than ``limit`` is skipped to its end and reported to ``on_long_line``."""
    buf = bytearray()
    skipping = False
    while chunk := await stream.receive_some(READ_SIZE):
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            if skipping:
                skipping = False
            elif len(buf) + newline - start > limit:
                on_long_line(len(buf) + newline - start)
                buf.clear()
            else:
                buf += chunk[start:newline]
                line = bytes(buf)
                buf.clear()
                await on_line(line)
            start = newline + 1
        if not skipping:
            buf += chunk[start:]
            if len(buf) > limit:
                on_long_line(len(buf))
                buf.clear()
                skipping = True


@asynccontextmanager
async def open_stdio_transport(
    target: str, spec: StdioTarget, *, log_prefix: str = ""
) -> AsyncIterator[StdioTransport]:
    """Start ``spec.cmd`` and talk MCP to it over its stdio.

    Raises:
        UpstreamUnavailable: the command cannot be started.
    """
    try:
        process = await trio.lowlevel.open_process(
            [spec.cmd, *spec.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **spec.env},
            start_new_session=True,
        )
    except OSError as exc:
        raise UpstreamUnavailable(
            f"target {target}: cannot start {spec.cmd!r}: {exc.strerror or exc}"
        ) from None
    logger.debug("%sstdio target %s: started pid %d", log_prefix, target, process.pid)
    transport = StdioTransport(target, process, log_prefix=log_prefix)
    try:
        async with open_task_nursery() as nursery:
            nursery.start_soon(transport.read_stdout)
            nursery.start_soon(transport.read_stderr)
            try:
                yield transport
            finally:
                with trio.CancelScope(shield=True):
                    await transport.aclose()
                nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:  # only if the closing above failed
            process.kill()
