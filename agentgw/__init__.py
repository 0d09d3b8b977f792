"""agentgw: an MCP gateway on Trio, config-compatible with agentgateway.

Embedding::

    config = agentgw.load_config("config.yaml")
    gw = agentgw.Gateway(config)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(gw.serve)
        ...
        gw.shutdown()  # graceful; or cancel the nursery to stop at once

The public names load on first use, so that ``python -m agentgw.demo`` (a
stdio target the gateway may start once per session) does not import the
whole gateway.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agentgw._version import __version__

if TYPE_CHECKING:
    from agentgw.app import Gateway, ListenAddress
    from agentgw.config.load import config_from_dict, load_config, parse_config
    from agentgw.errors import ConfigError

__all__ = [
    "ConfigError",
    "Gateway",
    "ListenAddress",
    "__version__",
    "config_from_dict",
    "load_config",
    "parse_config",
]

_HOMES = {
    "ConfigError": "agentgw.errors",
    "Gateway": "agentgw.app",
    "ListenAddress": "agentgw.app",
    "config_from_dict": "agentgw.config.load",
    "load_config": "agentgw.config.load",
    "parse_config": "agentgw.config.load",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'agentgw' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
