"""A demo MCP server shipped with agentgw: for newcomers, and as a reference
upstream in tests (it implements every server scenario of the MCP
conformance suite).

Run ``python -m agentgw.demo`` (stdio) or ``python -m agentgw.demo --http
PORT`` (Streamable HTTP at ``/mcp``, legacy HTTP+SSE at ``/sse``). The
protocol core is ``agentgw.demo.server`` with ``effects``, ``tools``,
``content``, ``modern`` (2026-07-28) and ``tasks`` (no I/O);
``agentgw.demo.stdio``, ``agentgw.demo.http`` and ``agentgw.demo.legacy_sse``
are its Trio transports, and ``agentgw.demo.runner`` runs its calls.
"""
