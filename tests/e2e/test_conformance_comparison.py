"""Fidelity: every conformance check that passes against the demo server
directly must pass through the gateway in front of it.

For each requirement set of the conformance suite 0.2.0-alpha.12 (2025-11-25
and 2026-07-28), the suite runs against the demo directly and through the
gateway with the demo as a stdio target, as a Streamable HTTP target and,
for 2025-11-25, as a legacy HTTP+SSE target. The runs go in parallel, each
with its own demo process. Checks are compared scenario by scenario and
check by check (the suite's ``-o`` JSON); a check that passes directly and
not through the gateway is lost, and fails the test. Checks that pass only
through the gateway are gains. The counts, the losses and the gains are
printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from tests.e2e.support import run_gateway
from tests.e2e.test_demo_conformance import NODE, ROOT, demo_process
from tests.e2e.test_mcp_gateway import mcp_config, stdio

SUITE_NEXT = ROOT / "node_modules" / "conformance-next" / "dist" / "index.js"
DEMO_STDIO = [sys.executable, "-m", "agentgw.demo", "--log-level", "warning"]
TRANSPORTS = {"2025-11-25": ("stdio", "http", "sse"), "2026-07-28": ("stdio", "http")}
# ``server-<scenario>-<ISO timestamp>``: one directory per scenario under -o.
_RESULT_DIR = re.compile(r"^server-(.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")

Results = dict[str, dict[str, str]]  # scenario -> check key -> status


def read_results(output: Path) -> Results:
    """Each scenario's checks from the suite's ``-o`` directory. A check's key
    is its id and name; the suite repeats some (one id per case), so a
    repeat gets ``#2``, ``#3`` in the order the suite ran them."""
    results: Results = {}
    for checks_file in sorted(output.glob("*/checks.json")):
        match = _RESULT_DIR.match(checks_file.parent.name)
        assert match, checks_file
        seen: Counter[str] = Counter()
        checks: dict[str, str] = {}
        for check in json.loads(checks_file.read_text()):
            key = f"{check['id']} [{check['name']}]"
            seen[key] += 1
            if seen[key] > 1:
                key += f" #{seen[key]}"
            checks[key] = check["status"]
        results[match.group(1)] = checks
    return results


async def run_suite(url: str, requirements: str, output: Path) -> Results:
    """Run a requirement set against ``url``; the suite exits non-zero when a
    check fails, so only its JSON output says how the run went."""
    with trio.fail_after(240):
        run = await trio.run_process(
            [
                NODE,
                SUITE_NEXT,
                "server",
                "--url",
                url,
                "--requirements",
                requirements,
                "-o",
                output,
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    results = read_results(output)
    report = run.stdout.decode()[-3000:] + run.stderr.decode()[-2000:]
    assert results, f"no results from the suite against {url}: {report}"
    return results


async def server_scenarios(requirements: str) -> set[str]:
    """The server scenarios a requirement set runs: those it requires and
    those it runs without scoring (``[server]`` entries)."""
    listed = await trio.run_process(
        [NODE, SUITE_NEXT, "list", "--server", "--requirements", requirements],
        capture_stdout=True,
    )
    text = listed.stdout.decode()
    required = text.split("Server scenarios", 1)[1].split("Client scenarios", 1)[0]
    scenarios = set(re.findall(r"^  - (\S+)$", required, re.MULTILINE))
    return scenarios | set(re.findall(r"^    - (\S+) \[server\]$", text, re.MULTILINE))


def passed(checks: dict[str, str]) -> set[str]:
    return {key for key, status in checks.items() if status == "SUCCESS"}


@attrs.frozen
class Comparison:
    """One gateway run against the direct run, scenario by scenario."""

    label: str
    lost: list[str]
    gained: list[str]
    direct_passed: int
    through_passed: int


def compare(label: str, direct: Results, through: Results) -> Comparison:
    lost: list[str] = []
    gained: list[str] = []
    for scenario in sorted(direct.keys() | through.keys()):
        there = passed(direct.get(scenario, {}))
        here = passed(through.get(scenario, {}))
        lost += [f"{scenario}: {key}" for key in sorted(there - here)]
        gained += [f"{scenario}: {key}" for key in sorted(here - there)]
    return Comparison(
        label,
        lost,
        gained,
        sum(len(passed(c)) for c in direct.values()),
        sum(len(passed(c)) for c in through.values()),
    )


def report(requirements: str, direct: Results, comparisons: list[Comparison]) -> str:
    failed = sum(s == "FAILURE" for checks in direct.values() for s in checks.values())
    lines = [
        f"conformance {requirements}, directly: "
        f"{sum(len(passed(c)) for c in direct.values())} passed, {failed} failed "
        f"({len(direct)} scenarios)"
    ]
    for c in comparisons:
        lines.append(
            f"  through the gateway, {c.label} target: {c.through_passed} passed; "
            f"{len(c.lost)} lost, {len(c.gained)} gained"
        )
        lines += [f"    lost   {item}" for item in c.lost]
        lines += [f"    gained {item}" for item in c.gained]
    return "\n".join(lines)


# ---------------------------------------------------------------- the systems


def _protected(config: dict[str, Any]) -> dict[str, Any]:
    backend = config["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["mcp"]
    backend["dnsRebindingProtection"] = True
    return config


def _polling(config: dict[str, Any]) -> dict[str, Any]:
    """A stdio or legacy SSE target cannot hang up a call's stream (SEP-1699
    polling: ``server-sse-polling``'s test_reconnection); the gateway then
    does it by its own policy: every POST stream is hung up after its
    priming event, and the client resumes it with Last-Event-ID. A Streamable
    HTTP target's own hang-ups are relayed without it."""
    config["config"]["mcp"] = {"ssePollAfter": "0s"}
    return config


@asynccontextmanager
async def gateway_in_front(transport: str) -> AsyncIterator[str]:
    """The gateway with the demo as a ``transport`` target; yields its URL."""
    if transport == "stdio":
        config = _polling(_protected(mcp_config(stdio("demo", DEMO_STDIO))))
        async with run_gateway(config) as (_, port):
            yield f"http://localhost:{port}/mcp"
        return
    async with demo_process() as demo_url:
        if transport == "http":
            config = _protected(mcp_config({"name": "demo", "mcp": {"host": demo_url}}))
        else:
            sse_url = demo_url.removesuffix("/mcp") + "/sse"
            config = _polling(_protected(mcp_config({"name": "demo", "sse": {"host": sse_url}})))
        async with run_gateway(config) as (_, port):
            yield f"http://localhost:{port}/mcp"


async def _direct(requirements: str, output: Path) -> Results:
    async with demo_process() as url:
        return await run_suite(url.replace("127.0.0.1", "localhost"), requirements, output)


async def _through(requirements: str, transport: str, output: Path) -> Results:
    async with gateway_in_front(transport) as url:
        return await run_suite(url, requirements, output)


@pytest.mark.parametrize("requirements", sorted(TRANSPORTS))
async def test_no_check_is_lost_through_the_gateway(
    requirements: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (NODE.exists() and SUITE_NEXT.exists()):
        pytest.skip("the npm test peers are not installed (make test installs them)")
    scenarios = await server_scenarios(requirements)
    runs: dict[str, Results] = {}

    took: dict[str, float] = {}

    async def run(label: str) -> None:
        output = tmp_path / label
        start = trio.current_time()
        if label == "direct":
            runs[label] = await _direct(requirements, output)
        else:
            runs[label] = await _through(requirements, label, output)
        took[label] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        for label in ("direct", *TRANSPORTS[requirements]):
            nursery.start_soon(run, label)

    direct = runs["direct"]
    assert set(direct) == scenarios
    # The comparison means something: the demo passes most of the set directly.
    assert sum(len(passed(c)) for c in direct.values()) >= 80
    comparisons = [compare(t, direct, runs[t]) for t in TRANSPORTS[requirements]]
    text = report(requirements, direct, comparisons)
    text += "\n  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(took.items()))
    with capsys.disabled():
        print(f"\n{text}")
    assert all(not c.lost for c in comparisons), text


# ---------------------------------------------------------------- the comparison itself


def _write(output: Path, scenario: str, checks: list[tuple[str, str, str]]) -> None:
    folder = output / f"server-{scenario}-2026-12-03T01-58-48-004Z"
    folder.mkdir(parents=True)
    body = [{"id": i, "name": n, "status": s} for i, n, s in checks]
    (folder / "checks.json").write_text(json.dumps(body))


def test_read_results_keys_repeated_checks_by_order(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "server-stateless",
        [("meta-400", "M", "SUCCESS"), ("meta-400", "M", "FAILURE"), ("ack", "A", "SKIPPED")],
    )
    assert read_results(tmp_path) == {
        "server-stateless": {
            "meta-400 [M]": "SUCCESS",
            "meta-400 [M] #2": "FAILURE",
            "ack [A]": "SKIPPED",
        }
    }


def test_compare_finds_losses_and_gains_check_by_check() -> None:
    direct = {"a": {"x": "SUCCESS", "y": "SUCCESS", "z": "FAILURE"}, "b": {"w": "SUCCESS"}}
    through = {"a": {"x": "SUCCESS", "y": "WARNING", "z": "SUCCESS"}}
    result = compare("http", direct, through)
    assert result.lost == ["a: y", "b: w"]  # a scenario missing through the gateway loses all
    assert result.gained == ["a: z"]
    assert (result.direct_passed, result.through_passed) == (3, 2)
    assert "1 gained" in report("2026-07-28", direct, [result])


def test_the_npm_suites_are_pinned() -> None:
    package = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    assert package["@modelcontextprotocol/conformance"] == "0.1.16"
    assert package["conformance-next"] == "npm:@modelcontextprotocol/conformance@0.2.0-alpha.12"
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    assert lock["node_modules/conformance-next"]["version"] == "0.2.0-alpha.12"


# ---------------------------------------------------------------- by hand


async def compare_in_front_of(url: str, sets: list[str]) -> bool:
    """Run each requirement set against ``url`` directly and through the
    gateway with ``url`` as a Streamable HTTP target; print the report.
    Returns whether no check was lost."""
    config = _protected(mcp_config({"name": "target", "mcp": {"host": url}}))
    clean = True
    with tempfile.TemporaryDirectory() as tmp:
        async with run_gateway(config) as (_, port):
            for requirements in sets:
                output = Path(tmp) / requirements
                direct = await run_suite(url, requirements, output / "direct")
                through = await run_suite(
                    f"http://localhost:{port}/mcp", requirements, output / "gateway"
                )
                comparison = compare("Streamable HTTP", direct, through)
                print(report(requirements, direct, [comparison]), flush=True)
                clean = clean and not comparison.lost
    return clean


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.test_conformance_comparison",
        description="Compare the conformance suite's checks against an MCP server "
        "directly and through agentgw in front of it.",
    )
    parser.add_argument("url", help="the server's Streamable HTTP endpoint")
    parser.add_argument(
        "--requirements", action="append", choices=sorted(TRANSPORTS), help="default: both"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sets = args.requirements or sorted(TRANSPORTS)
    return 0 if trio.run(compare_in_front_of, args.url, sets) else 1


if __name__ == "__main__":
    sys.exit(main())
