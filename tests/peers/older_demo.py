"""The demo server on stdio, speaking only 2025-11-25: it answers
``server/discover`` with -32601, so the gateway reaches it over its shared
2025-11-25 session and translates what the demo asks in the middle of a
call (sampling, elicitation, roots) into ``input_required`` rounds."""

from __future__ import annotations

import trio

from agentgw.demo import server
from agentgw.demo.stdio import serve_stdio

if __name__ == "__main__":
    del server._METHODS["server/discover"]
    trio.run(serve_stdio)
