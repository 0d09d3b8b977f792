"""The arithmetic of bench/ reports: issue 10's targets, and the soak's growth."""

from __future__ import annotations

import pytest

from bench.report import (
    AddedLatencyTarget,
    FairnessTarget,
    Measurement,
    RatioTarget,
    RunInfo,
    Summary,
    render,
    verdict,
)
from bench.scenario_soak import growth, plan
from bench.wrk import WrkResult


def _wrk(rps: float, p50_ms: float, p99_ms: float) -> WrkResult:
    return WrkResult(
        requests=int(rps),
        duration_s=1.0,
        requests_per_s=rps,
        p50_s=p50_ms / 1e3,
        p90_s=p99_ms / 1e3,
        p99_s=p99_ms / 1e3,
        max_s=p99_ms / 1e3,
        socket_errors=0,
        non_2xx=0,
        unexpected=0,
        cpu_s=0.1,
    )


def _summary(system: str, c: int, rps: float, p50_ms: float, p99_ms: float) -> Summary:
    wrk = _wrk(rps, p50_ms, p99_ms)
    return Summary(system, c, (Measurement(1, system, c, wrk, 1.0, 0.5),))


SUMMARIES = [
    _summary("direct", 1, 6000, 0.10, 0.30),
    _summary("floor", 1, 2000, 0.40, 0.90),
    _summary("gateway", 1, 1700, 0.40, 0.95),
    _summary("direct", 32, 17000, 1.8, 4.0),
    _summary("floor", 32, 3000, 10.0, 18.0),
    _summary("gateway", 32, 2000, 15.0, 70.0),
    _summary("gateway", 256, 1800, 100.0, 350.0),
]


def test_ratio_target_is_met_only_where_the_ratio_reaches_it() -> None:
    target = RatioTarget("gateway", "floor", 0.8, at=(1, 32))
    assert target.points(SUMMARIES) == [(1, "0.85", True), (32, "0.67", False)]
    assert verdict(target.points(SUMMARIES)) == "met at c=1 only"
    everywhere = RatioTarget("gateway", "floor", 0.5)
    assert verdict(everywhere.points(SUMMARIES)) == "met"


def test_added_latency_target_compares_p50_with_the_baseline() -> None:
    target = AddedLatencyTarget("gateway", "direct", 0.35e-3, at=(1,))
    assert target.points(SUMMARIES) == [(1, "+300 µs", True)]
    strict = AddedLatencyTarget("gateway", "direct", 0.25e-3, at=(1,))
    assert verdict(strict.points(SUMMARIES)) == "missed"


def test_fairness_target_is_p99_over_p50() -> None:
    assert FairnessTarget("gateway", 4.0, at=(256,)).points(SUMMARIES) == [(256, "3.5", True)]
    assert verdict(FairnessTarget("gateway", 4.0, at=(32,)).points(SUMMARIES)) == "missed"
    assert verdict(FairnessTarget("floor", 4.0, at=(256,)).points(SUMMARIES)) == "not measured"


def test_the_report_says_met_or_missed_with_the_numbers() -> None:
    targets = (
        RatioTarget("gateway", "floor", 0.8, at=(1, 32)),
        FairnessTarget("gateway", 4.0, at=(256,)),
        RatioTarget("gateway", "nginx", 2.0, at=(32,)),
    )
    text = render(
        RunInfo("t", ()),
        SUMMARIES,
        [("gateway", "floor")],
        {},
        {},
        [],
        targets=targets,
    )
    assert (
        "| gateway/floor req/s | at least 0.80 at c=1 and c=32 | 0.85 (c=1), 0.67 (c=32) |" in text
    )
    assert "| gateway p99/p50 | at most 4 at c=256 | 3.5 (c=256) | met |" in text
    assert "| gateway/nginx req/s | at least 2.00 at c=32 | n/a | not measured |" in text
    assert "met at c=1 (0.85), missed at c=32 (0.67)" in text


def test_the_cost_over_a_baseline_is_the_added_cpu_per_request() -> None:
    def rounds(system: str, runs: list[tuple[float, float]]) -> Summary:
        # (req/s over 1 s, CPU seconds of the system over it), one per round.
        return Summary(
            system,
            1,
            tuple(
                Measurement(n, system, 1, _wrk(rps, 1.0, 2.0), 1.0, cpu)
                for n, (rps, cpu) in enumerate(runs, 1)
            ),
        )

    summaries = [
        # 0.80, 0.70 and 0.90 ms per request: the median is 0.80 ms.
        rounds("plain", [(1000, 0.8), (1000, 0.7), (1000, 0.9)]),
        # 0.92 ms per request in every round.
        rounds("tls", [(900, 0.828), (800, 0.736), (1000, 0.92)]),
    ]
    assert summaries[0].cpu_per_request_s == pytest.approx(0.8e-3)
    text = render(RunInfo("t", ()), summaries, [], {}, {}, [], cost_comparisons=[("tls", "plain")])
    assert "## What `tls` costs over `plain`" in text
    # Median rounds by req/s: 1,000 and 900; CPU per request 0.800 and 0.920 ms.
    assert "| 1 | 1,000 | 900 | 0.90 | 0.800 ms | 0.920 ms | +0.120 ms (+15%) |" in text
    # A pair that was not measured gets no table.
    text = render(RunInfo("t", ()), summaries, [], {}, {}, [], cost_comparisons=[("x", "plain")])
    assert "costs over" not in text


def test_growth_is_the_rise_of_the_fitted_line_over_the_window() -> None:
    times = [float(t) for t in range(0, 100, 10)]
    assert growth(times, [100.0] * 10, 0.0) == pytest.approx(0.0)
    rising = [100.0 + t / 10 for t in times]  # 100 at 0, 109 at 90
    assert growth(times, rising, 0.0) == pytest.approx(0.09)
    # Only the window counts, and samples left out (None) do not.
    stepped = [50.0] * 5 + [100.0, None, 100.0, 100.0, 100.0]
    assert growth(times, stepped, 50.0) == pytest.approx(0.0)
    assert growth(times, [100.0] * 10, 80.0) is None  # two points are not a trend


def test_plan_scales_down_for_a_short_run() -> None:
    full = plan(1800)
    assert (full.sample_s, full.restart_every_s, full.window_s, full.warmup_s) == (
        10.0,
        300,
        1200,
        600,
    )
    quick = plan(60)
    assert quick.window_s == 40 and quick.restart_every_s == 20 and quick.sample_s == 2.0
