"""The catalogue of scenarios `python -m bench` knows, in the order `run` runs them."""

from __future__ import annotations

from bench import (
    scenario_body_50mb,
    scenario_http,
    scenario_idle_sse,
    scenario_mcp,
    scenario_mcp_auth,
    scenario_open_loop,
    scenario_soak,
    scenario_sse_fanout,
    scenario_tools_list,
)
from bench.base import Scenario

# `soak` runs for 30 minutes: only when asked for by name.
ON_REQUEST = frozenset({"soak"})


def scenarios() -> dict[str, Scenario]:
    return {
        s.name: s
        for s in (
            scenario_http.SCENARIO,
            scenario_mcp.SCENARIO,
            scenario_mcp_auth.SCENARIO,
            scenario_open_loop.SCENARIO,
            scenario_tools_list.SCENARIO,
            scenario_sse_fanout.SCENARIO,
            scenario_idle_sse.SCENARIO,
            scenario_body_50mb.SCENARIO,
            scenario_soak.SCENARIO,
        )
    }
