"""MCP upstream transports: stdio, Streamable HTTP, legacy SSE, WebSocket."""

from agentgw.upstream.mcp.base import Answer, McpTransport, TransportClosed, open_transport

__all__ = ["Answer", "McpTransport", "TransportClosed", "open_transport"]
