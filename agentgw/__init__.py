"""agentgw: an MCP gateway on Trio, config-compatible with agentgateway."""

from __future__ import annotations

from agentgw._version import __version__
from agentgw.errors import ConfigError

__all__ = ["ConfigError", "__version__"]
