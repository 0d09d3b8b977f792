"""The scenarios `python -m bench` knows, and what a scenario gives the runner."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.systems import Service
from bench.wrk import POST_SCRIPT


@dataclass(frozen=True)
class Placement:
    """Which core the systems under test and the load generator run on (None: unpinned)."""

    server_cpu: int | None
    load_cpu: int | None

    def describe(self) -> str:
        if self.server_cpu is None or self.load_cpu is None:
            return "not pinned (no taskset, or fewer than 2 cores)"
        return (
            f"systems under test pinned to core {self.server_cpu}, "
            f"wrk and the harness to core {self.load_cpu} (taskset)"
        )


@dataclass(frozen=True)
class Target:
    """One system to load: `url` is where wrk sends requests, `service` the process we cost.

    wrk runs `script` with `env` added to its environment.
    """

    system: str
    url: str
    service: Service
    script: Path = POST_SCRIPT
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Started:
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)  # for the report's header


# Starts the scenario's processes (registering their stop on the stack) for the wanted systems.
Starter = Callable[[ExitStack, Placement, Collection[str]], Started]


@dataclass(frozen=True)
class Scenario:
    """`load` and `upstream` describe the method in the report; each pair of
    `comparisons` is (system, baseline) and gets a table of ratios. `targets`
    gives some pairs the lowest throughput ratio an issue asks for: the report
    says whether it was met, and it never fails the run."""

    name: str
    summary: str
    systems: tuple[str, ...]
    concurrencies: tuple[int, ...]
    start: Starter
    load: str
    upstream: str
    comparisons: tuple[tuple[str, str], ...]
    targets: Mapping[tuple[str, str], float] = field(default_factory=dict)


def scenarios() -> dict[str, Scenario]:
    from bench import scenario_http, scenario_mcp, scenario_mcp_auth

    return {
        s.name: s
        for s in (scenario_http.SCENARIO, scenario_mcp.SCENARIO, scenario_mcp_auth.SCENARIO)
    }
