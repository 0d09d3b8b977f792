"""A demo MCP server shipped with agentgw: for newcomers, and as a reference
upstream in tests (it implements every server scenario of the MCP
conformance suite).

Run ``python -m agentgw.demo`` (stdio) or ``python -m agentgw.demo --http
PORT`` (Streamable HTTP at ``/mcp``). The protocol core is
``agentgw.demo.server`` (no I/O); ``agentgw.demo.stdio`` and
``agentgw.demo.http`` are its Trio transports.
"""
