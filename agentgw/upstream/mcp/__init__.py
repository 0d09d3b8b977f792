"""MCP upstream transports: stdio, Streamable HTTP, legacy SSE, WebSocket."""

from agentgw.upstream.mcp.base import McpTransport, TransportClosed, open_transport

__all__ = ["McpTransport", "TransportClosed", "open_transport"]
