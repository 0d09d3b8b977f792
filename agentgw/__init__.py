"""agentgw: an MCP gateway on Trio, config-compatible with agentgateway.

Embedding::

    config = agentgw.load_config("config.yaml")
    gw = agentgw.Gateway(config)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(gw.serve)
        ...
        gw.shutdown()  # graceful; or cancel the nursery to stop at once
"""

from __future__ import annotations

from agentgw._version import __version__
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
