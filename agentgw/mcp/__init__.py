"""MCP federation logic with no I/O: names, merging, ids, session tokens, versions."""
