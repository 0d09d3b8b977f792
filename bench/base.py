"""What every part of bench/ shares: the run's options, where processes run, what a
scenario is, and the facts every report states about the machine.

The layers of bench/, each importing only those below it (tests/test_bench_layout.py
checks that the graph has no cycle):

    cli                       the command line
    scenarios                 the catalogue: every scenario module, by name
    scenario_*                one scenario each
    runner, own_loop          the wrk loop; the loop of scenarios with their own load
    launch, peers             start agentgw, floor, the upstreams and the peers
    base                      this module
    report, plot, systems, wrk, mcp_session, tokens    leaves
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Collection, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import Target
from bench.systems import Service
from bench.wrk import POST_SCRIPT

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS_DIR = BENCH / "results"


@dataclass(frozen=True)
class RunOptions:
    rounds: int
    duration_s: int
    warmup_s: int
    systems: tuple[str, ...] | None  # None: all of the scenario's
    pin: bool
    results_dir: Path = RESULTS_DIR
    soak_s: int | None = None  # the soak's length; None: its default


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


def choose_placement(pin: bool) -> Placement:
    """Systems under test on the first core, the load and the harness on the second."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin or shutil.which("taskset") is None or len(cores) < 2:
        return Placement(server_cpu=None, load_cpu=None)
    return Placement(server_cpu=cores[0], load_cpu=cores[1])


@dataclass(frozen=True)
class LoadTarget:
    """One system for wrk to load: `url` is where wrk sends requests, `service`
    the process we cost. wrk runs `script` with `env` added to its environment."""

    system: str
    url: str
    service: Service
    script: Path = POST_SCRIPT
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Started:
    targets: list[LoadTarget] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)  # for the report's header


# Starts the scenario's processes (registering their stop on the stack) for the wanted systems.
Starter = Callable[[ExitStack, Placement, Collection[str]], Started]

# A scenario with its own measurement loop: it gets the options and whether
# --quick was given, writes its own report, and returns the exit status.
OwnLoop = Callable[[RunOptions, bool], int]


def _no_start(stack: ExitStack, placement: Placement, wanted: Collection[str]) -> Started:
    raise TypeError("this scenario brings its own measurement loop (Scenario.run)")


@dataclass(frozen=True)
class Scenario:
    """`load` and `upstream` describe the method in the report; each pair of
    `comparisons` is (system, baseline) and gets a table of ratios, and each pair
    of `cost_comparisons` a table of what the system costs over the baseline
    (req/s, CPU per request). `targets` are what an issue asks for
    (bench/report.py): the report says whether each was met, and none fails the run.

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
    cost_comparisons: tuple[tuple[str, str], ...] = ()
    targets: tuple[Target, ...] = ()
    run: OwnLoop | None = None
    # With --quick, only these concurrencies (empty: all of `concurrencies`).
    quick_concurrencies: tuple[int, ...] = ()
    # wrk's request timeout: a slow peer's answers at high concurrency need more than 2 s.
    request_timeout_s: int = 2


# ------------------------------------------------------------ facts of every report


def now_text() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def version(argv: Sequence[str]) -> str:
    """The first line `argv` prints (`node --version`, `wrk -v`), or "?"."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else "?"


def git_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown revision"
    return revision + (" with uncommitted changes" if git("status", "--porcelain") else "")


def result_path(results_dir: Path, scenario: str, suffix: str) -> Path:
    """bench/results/<YYYY-MM-DD>-<scenario><suffix>: a later run the same day overwrites it."""
    return results_dir / f"{datetime.date.today().isoformat()}-{scenario}{suffix}"


def write_report(results_dir: Path, scenario: str, report: str) -> Path:
    path = result_path(results_dir, scenario, ".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    return path


def shown(path: Path) -> Path:
    """`path` relative to the repository, when it is inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path
