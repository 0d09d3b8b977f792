"""Hot reload: where the config comes from, what may change, and the watcher.

How this works. ``ConfigSource`` is what ``agentgw`` was started with (``-f``,
``-c`` or nothing) and reads it the same way every time: ``app.prepare`` loads
it, converts it and compiles it, for ``--validate-only``, at start-up and on
every reload alike.

``ConfigWatcher.serve`` runs in the gateway's root nursery. Every
``POLL_INTERVAL`` seconds it looks at the file's identity: the path it
resolves to and the inode, size and times of what it points at. An edit in
place, an editor's rename over the file and a Kubernetes ConfigMap update (a
new ``..data`` symlink swapped in atomically) all change it. A change is read
once the file has stopped changing for ``SETTLE`` seconds, so a half-written
file is rarely seen; if one is, it fails to parse, the failure is logged, and
the write that completes it is a new change. ``request()`` (SIGHUP) reloads
at once, changed or not.

What a reload may change is what agentgateway reloads: ``binds``, ``mcp`` and
``frontendPolicies.tls``. The ``config:`` block and ``frontendPolicies.tracing``
are read at start-up only; ``fixed_changes`` names the keys a new file
changes there, and ``keep_fixed`` puts the running values back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NoReturn

import attrs
import trio

from agentgw.config.converter import Invalid, session_key, unstructure_config
from agentgw.config.load import default_config, load_config, parse_config
from agentgw.config.model import Config, Session
from agentgw.errors import ConfigError

logger = logging.getLogger(__name__)

SESSION_KEY_ENV = "SESSION_KEY"
POLL_INTERVAL = 1.0
SETTLE = 0.2
MAX_SETTLE_ROUNDS = 25


def with_session_key_from_env(config: Config) -> Config:
    """agentgateway's ``SESSION_KEY``: when set, it replaces
    ``config.session.key`` (a Kubernetes Secret gives every replica the same).

    Raises:
        ConfigError: the variable holds no valid key (the key is never shown).
    """
    text = os.environ.get(SESSION_KEY_ENV, "").strip()
    if not text:
        return config
    try:
        key = session_key(text)
    except Invalid as exc:
        raise ConfigError([f"{SESSION_KEY_ENV}: {exc.problem}"]) from None
    return attrs.evolve(config, config=attrs.evolve(config.config, session=Session(key)))


@attrs.frozen
class ConfigSource:
    """Where the config comes from: a file (``-f``, watched), inline text
    (``-c``) or the built-in default, and ``--log-format``."""

    file: str | None = None
    inline: str | None = None
    log_format: Literal["text", "json"] | None = None

    def load(self) -> Config:
        """Read and convert the config, as at start-up.

        Raises:
            ConfigError: every problem, each with its path.
        """
        if self.file is not None:
            config = load_config(self.file)
        elif self.inline is not None:
            config = parse_config(self.inline, source="--config")
        else:
            config = default_config()
        config = with_session_key_from_env(config)
        if self.log_format is not None:
            logging_cfg = attrs.evolve(config.config.logging, format=self.log_format)
            config = attrs.evolve(config, config=attrs.evolve(config.config, logging=logging_cfg))
        return config


# ---------------------------------------------------------------- what may change


def _fixed_document(config: Config) -> dict[str, Any]:
    doc = unstructure_config(
        Config(config=config.config, frontend_policies=config.frontend_policies)
    )
    fixed: dict[str, Any] = {"config": doc.get("config", {})}
    tracing = doc.get("frontendPolicies", {}).get("tracing")
    if tracing is not None:
        fixed["frontendPolicies"] = {"tracing": tracing}
    return fixed


def _differences(old: Any, new: Any, path: str) -> list[str]:
    if old == new:
        return []
    # A block left out is all defaults: name the keys the other one sets.
    old = {} if old is None and isinstance(new, dict) else old
    new = {} if new is None and isinstance(old, dict) else new
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [path]
    out: list[str] = []
    for key in [*old, *(k for k in new if k not in old)]:
        out.extend(_differences(old.get(key), new.get(key), f"{path}.{key}" if path else key))
    return out


def fixed_changes(running: Config, new: Config) -> list[str]:
    """The keys read at start-up only (``config.*``,
    ``frontendPolicies.tracing``) that ``new`` sets differently, as paths
    (``config.session.key``); never their values."""
    return _differences(_fixed_document(running), _fixed_document(new), "")


def keep_fixed(new: Config, running: Config) -> Config:
    """``new`` with the running values of the keys read at start-up only."""
    frontend = attrs.evolve(new.frontend_policies, tracing=running.frontend_policies.tracing)
    return attrs.evolve(new, config=running.config, frontend_policies=frontend)


# ---------------------------------------------------------------- the watcher


@attrs.frozen
class FileState:
    """What identifies one version of the file."""

    target: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def file_state(path: str) -> FileState | None:
    """The file's identity now, following symlinks; None if it is missing."""
    try:
        st = os.stat(path)
        target = os.path.realpath(path)
    except OSError:
        return None
    return FileState(target, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@attrs.define(eq=False)
class ConfigWatcher:
    """Polls one config file and calls ``reload`` when it changed or when
    asked (SIGHUP).

    Args:
        path: the file given with ``-f``.
        interval: seconds between two looks at the file.
        settle: how long a changed file must stay the same before it is read.
    """

    path: str
    interval: float = POLL_INTERVAL
    settle: float = SETTLE
    _asked: trio.Event = attrs.field(factory=trio.Event)
    _seen: FileState | None = None
    _missing_reported: bool = False  # warned once until it is back

    def request(self) -> None:
        """Reload at once, whether the file changed or not."""
        self._asked.set()

    async def serve(
        self,
        reload: Callable[[], Awaitable[object]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Watch until cancelled; ``reload`` runs in this task, one at a time."""
        self._seen = file_state(self.path)
        logger.info("watching the config file %s", self.path)
        task_status.started()
        while True:
            with trio.move_on_after(self.interval):
                await self._asked.wait()
            asked = self._asked.is_set()
            self._asked = trio.Event()
            state = file_state(self.path)
            if state is not None and state != self._seen:
                state = await self._settled(state)
            if state is None and not self._missing_reported and not asked:
                logger.warning("config file %s is missing: keeping the running config", self.path)
            self._missing_reported = state is None
            if asked or (state is not None and state != self._seen):
                self._seen = state
                await reload()

    async def _settled(self, state: FileState | None) -> FileState | None:
        for _ in range(MAX_SETTLE_ROUNDS):
            await trio.sleep(self.settle)
            now = file_state(self.path)
            if now == state:
                break
            state = now
        return state
