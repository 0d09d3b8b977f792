"""Read a configuration from a file, a string or a dict, and expand the
``mcp:`` shorthand into a bind."""

from __future__ import annotations

import importlib.resources
import json
import os
import sys
from typing import Any

import attrs
import yaml

from agentgw.config import model as m
from agentgw.config.converter import NOTHING_TO_SERVE, port_clashes, render, structure_config
from agentgw.config.legacy import is_legacy, structure_legacy
from agentgw.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (agentgateway does too)."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _parse_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError([f"{where}: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: {exc}"]) from None


def parse_config(text: str, *, source: str = "<inline>") -> m.Config:
    """Parse a YAML (or JSON, which is YAML) configuration.

    Args:
        text: the document.
        source: what to call it in syntax errors (a file name, ``--config``).

    Returns:
        The configuration.

    Raises:
        ConfigError: a syntax error (``source:line:column: problem``) or every
            problem with the content (``path: problem``).
    """
    return _structure(_parse_yaml(text, source), source)


def load_config(path: str | os.PathLike[str]) -> m.Config:
    """Load a configuration file: JSON when it ends in ``.json``, else YAML.

    Raises:
        ConfigError: the file cannot be read or parsed (the message names the
            file, and the line and column when known), or its content is
            invalid.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{name}: {reason}"]) from None
    if not name.endswith(".json"):
        return parse_config(text, source=name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{name}:{exc.lineno}:{exc.colno}: {exc.msg}"]) from None
    return _structure(data, name)


def config_from_dict(data: object) -> m.Config:
    """Structure an already parsed document (dicts, lists, scalars).

    Raises:
        ConfigError: with every problem found.
    """
    return _structure(data, "<inline>")


def _structure(data: object, source: str) -> m.Config:
    # agentgateway's legacy static format still loads, with a warning.
    if is_legacy(data):
        return structure_legacy(data, source=source)
    return structure_config(data)


def default_config() -> m.Config:
    """The configuration ``agentgw`` runs with when given none."""
    text = importlib.resources.files("agentgw.config").joinpath("default.yaml").read_text("utf-8")
    config = parse_config(text, source="default.yaml")
    if config.mcp is None:  # pragma: no cover - the shipped file has one
        return config
    # The demo target runs with the interpreter that runs agentgw.
    targets = tuple(
        attrs.evolve(t, stdio=attrs.evolve(t.stdio, cmd=sys.executable))
        if t.stdio is not None and t.stdio.cmd == "python"
        else t
        for t in config.mcp.targets
    )
    return attrs.evolve(config, mcp=attrs.evolve(config.mcp, targets=targets))


# The paths the ``mcp:`` shorthand serves. agentgateway's legacy SSE transport
# posts back to ``/sse?sessionId=...``, so there is no separate message path.
MCP_MATCHES = (
    m.RouteMatch(path=m.PathMatch(path_prefix="/mcp")),
    m.RouteMatch(path=m.PathMatch(path_prefix="/sse")),
    m.RouteMatch(path=m.PathMatch(path_prefix="/.well-known")),
)


def effective_binds(config: m.Config) -> tuple[m.Bind, ...]:
    """``config.binds``, plus one bind for the ``mcp:`` shorthand if set.

    Raises:
        ConfigError: nothing to serve, or ports used twice.
    """
    mcp = config.mcp
    problems = [
        f"{render(at)}: {problem}"
        for at, problem in port_clashes(
            [b.port for b in config.binds], mcp.port if mcp is not None else None
        )
    ]
    if not config.binds and mcp is None:
        problems.append(f"config: {NOTHING_TO_SERVE}")
    if problems:
        raise ConfigError(problems)
    if mcp is None:
        return config.binds
    backend = m.Backend(
        mcp=m.McpBackend(
            targets=mcp.targets,
            stateful_mode=mcp.stateful_mode,
            prefix_mode=mcp.prefix_mode,
            failure_mode=mcp.failure_mode,
            dns_rebinding_protection=mcp.dns_rebinding_protection,
            rate_limits=mcp.rate_limits,
        )
    )
    route = m.Route(name="mcp", matches=MCP_MATCHES, policies=mcp.policies, backends=(backend,))
    listener = m.Listener(name="mcp", routes=(route,))
    return (*config.binds, m.Bind(listeners=(listener,), port=mcp.port, address=mcp.address))
