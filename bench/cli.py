"""The command line: `python -m bench list` and `python -m bench run`."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bench.base import RESULTS_DIR, RunOptions
from bench.runner import run_scenario
from bench.scenarios import ON_REQUEST, scenarios

QUICK_ROUNDS = 1
QUICK_DURATION_S = 3
DEFAULT_ROUNDS = 3
DEFAULT_DURATION_S = 10
WARMUP_S = 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted: systems under test stopped", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the scenarios")
    run = commands.add_parser("run", help="run scenarios and write bench/results/")
    run.add_argument(
        "--scenario",
        action="append",
        choices=sorted(scenarios()),
        help="scenario to run (repeatable; default: all but soak)",
    )
    run.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_ROUNDS} round of {QUICK_DURATION_S} s (--rounds/--duration still win)",
    )
    run.add_argument(
        "--rounds", type=_positive, help=f"rounds per system (default {DEFAULT_ROUNDS})"
    )
    run.add_argument(
        "--duration",
        type=_positive,
        metavar="S",
        help=f"measured seconds per run (default {DEFAULT_DURATION_S})",
    )
    run.add_argument(
        "--systems",
        help="comma-separated systems to load (default: all of each scenario's; "
        "`python -m bench list` names them)",
    )
    run.add_argument(
        "--soak-duration",
        type=_positive,
        metavar="S",
        help="length of the soak in seconds (default 1800; 60 with --quick)",
    )
    run.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    run.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help="where reports go (default bench/results/)",
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _list() -> int:
    for scenario in scenarios().values():
        print(f"{scenario.name:<11} {scenario.summary}")
        print(f"{'':<11} systems: {', '.join(scenario.systems)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    quick_rounds, quick_duration = (
        (QUICK_ROUNDS, QUICK_DURATION_S) if args.quick else (DEFAULT_ROUNDS, DEFAULT_DURATION_S)
    )
    options = RunOptions(
        rounds=args.rounds or quick_rounds,
        duration_s=args.duration or quick_duration,
        warmup_s=WARMUP_S,
        systems=_systems(args.systems),
        pin=not args.no_pin,
        results_dir=args.results,
        soak_s=args.soak_duration,
    )
    known = scenarios()
    chosen = [known[name] for name in args.scenario or [n for n in known if n not in ON_REQUEST]]
    offered = {system for scenario in chosen for system in scenario.systems}
    unknown = sorted(set(options.systems or ()) - offered)
    if unknown:
        print(f"error: no scenario run has the system {', '.join(unknown)}", file=sys.stderr)
        return 2
    status = 0
    for scenario in chosen:
        if scenario.run is not None:
            status = max(status, scenario.run(options, args.quick))
        else:
            status = max(status, run_scenario(scenario, options, quick=args.quick))
    return status


def _systems(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
