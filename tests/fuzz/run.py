"""The long fuzz run: ``python -m tests.fuzz.run --minutes 20``.

Runs the property fuzzing of the pure parts (``tests/test_fuzz.py``) with
many more examples, then the socket fuzz run (``tests.fuzz.sockets``) for
the given time, and writes a Markdown report (``--report``, default
``bench/results/<date>-fuzz.md``). Exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import trio

from tests.fuzz.sockets import Results, fuzz, open_target

ROOT = Path(__file__).resolve().parents[2]


def run_pure(examples: int) -> tuple[bool, str, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
        cwd=ROOT,
        env={**os.environ, "AGENTGW_FUZZ_EXAMPLES": str(examples)},
        capture_output=True,
        text=True,
        check=False,
    )
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    return proc.returncode == 0, tail, time.monotonic() - start


async def run_sockets(seconds: float, seed: int) -> Results:
    async with open_target() as target:
        return await fuzz(target, random.Random(seed), seconds=seconds)


def report(
    args: argparse.Namespace,
    pure: tuple[bool, str, float] | None,
    results: Results,
    started: str,
    commit: str,
) -> str:
    lines = [
        "# Fuzz run",
        "",
        f"- Started: {started}; commit `{commit}` (the code under test)",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. The machine was shared with other work while"
        " this ran, so the rates below are lower bounds, not benchmarks.",
        f"- Command: `python -m tests.fuzz.run --minutes {args.minutes:g} --seed {args.seed}"
        f" --pure-examples {args.pure_examples}`",
        "",
        "## Pure parts (hypothesis)",
        "",
    ]
    if pure is None:
        lines.append("Not run.")
    else:
        ok, tail, took = pure
        lines += [
            f"`tests/test_fuzz.py` with {args.pure_examples} examples per property:"
            f" **{'passed' if ok else 'FAILED'}** in {took:.0f} s.",
            "",
            "```",
            tail,
            "```",
        ]
    lines += [
        "",
        "## Over real sockets",
        "",
        f"{results.cases} cases in {results.seconds:.0f} s"
        f" ({results.cases / max(results.seconds, 1e-9):.1f}/s), seed {args.seed}."
        f" Each case is followed by a normal request, which must get 200 from the upstream."
        f" {results.forwarded} cases reached the upstream.",
        "",
        "| first answer | cases |",
        "|---|---:|",
    ]
    for outcome, count in sorted(results.outcomes.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {outcome} | {count} |")
    lines += ["", f"Violations: **{len(results.violations)}**", ""]
    for violation in results.violations[:50]:
        lines.append(f"- `{violation[:400]}`")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="socket fuzzing time")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--pure-examples", type=int, default=5000, help="0 skips them")
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = _commit()
    pure = run_pure(args.pure_examples) if args.pure_examples else None
    results = trio.run(run_sockets, args.minutes * 60, args.seed)
    text = report(args, pure, results, started, commit)
    date = datetime.date.today().isoformat()
    path = args.report or ROOT / "bench" / "results" / f"{date}-fuzz.md"
    path.write_text(text)
    print(text)
    print(f"report: {path}")
    failed = (pure is not None and not pure[0]) or bool(results.violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
