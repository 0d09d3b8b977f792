"""The scenarios `python -m bench` knows, and what a scenario gives the runner."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.report import RatioTarget
from bench.systems import Service
from bench.wrk import POST_SCRIPT

if TYPE_CHECKING:
    from bench.runner import RunOptions


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

# A scenario with its own measurement loop: it gets the options and whether
# --quick was given, writes its own report, and returns the exit status.
OwnLoop = Callable[["RunOptions", bool], int]


def _no_start(stack: ExitStack, placement: Placement, wanted: Collection[str]) -> Started:
    raise TypeError("this scenario brings its own measurement loop (Scenario.run)")


@dataclass(frozen=True)
class Scenario:
    """`load` and `upstream` describe the method in the report; each pair of
    `comparisons` is (system, baseline) and gets a table of ratios. `targets`
    gives some pairs the lowest throughput ratio an issue asks for (a float for
    every concurrency, or a `RatioTarget` at one): the report says whether it
    was met, and it never fails the run.

    A scenario that wrk cannot drive gives `run` instead, and none of the
    wrk-shaped fields: the CLI calls it rather than the runner."""

    name: str
    summary: str
    systems: tuple[str, ...]
    concurrencies: tuple[int, ...] = ()
    start: Starter = _no_start
    load: str = ""
    upstream: str = ""
    comparisons: tuple[tuple[str, str], ...] = ()
    targets: Mapping[tuple[str, str], float | RatioTarget] = field(default_factory=dict)
    run: OwnLoop | None = None
    # With --quick, only these concurrencies (empty: all of `concurrencies`).
    quick_concurrencies: tuple[int, ...] = ()
    # wrk's request timeout: a slow peer's answers at high concurrency need more than 2 s.
    request_timeout_s: int = 2


def scenarios() -> dict[str, Scenario]:
    from bench import (
        scenario_body_50mb,
        scenario_http,
        scenario_idle_sse,
        scenario_mcp,
        scenario_mcp_auth,
        scenario_open_loop,
        scenario_sse_fanout,
        scenario_tools_list,
    )

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
        )
    }
