"""Token buckets (localRateLimit and MCP rateLimits) and their pipeline step; no I/O."""

from __future__ import annotations

import pytest

from agentgw.config.model import McpRateLimit, RateLimit
from agentgw.errors import SERVER_ERROR, ConfigError
from agentgw.policy import authz
from agentgw.policy.pipeline import Continue, RequestView, Respond, RoutePolicies, run_request
from agentgw.policy.ratelimit import (
    MAX_KEYS,
    Allowed,
    Limited,
    McpRateLimits,
    RateLimiter,
    check_all,
    compile_mcp_limits,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, *specs: RateLimit, path: str = "route.localRateLimit") -> RateLimiter:
    return RateLimiter(path, specs, clock)


def outcomes(limiters: list[RateLimiter], n: int) -> list[bool]:
    return [isinstance(check_all(limiters), Allowed) for _ in range(n)]


def test_a_bucket_starts_full_and_refills_in_steps() -> None:
    clock = Clock()
    rl = limiter(clock, RateLimit(fill_interval=10, max_tokens=3, tokens_per_fill=1))
    assert outcomes([rl], 4) == [True, True, True, False]
    clock.now += 9.9  # not yet a whole interval
    assert outcomes([rl], 1) == [False]
    clock.now += 0.1
    assert outcomes([rl], 2) == [True, False]
    assert rl.limited == 3


def test_refills_never_exceed_max_tokens() -> None:
    clock = Clock()
    rl = limiter(clock, RateLimit(fill_interval=1, max_tokens=2, tokens_per_fill=2))
    assert outcomes([rl], 2) == [True, True]
    clock.now += 3600
    assert outcomes([rl], 3) == [True, True, False]


def test_missed_intervals_are_caught_up_at_once() -> None:
    clock = Clock()
    rl = limiter(clock, RateLimit(fill_interval=1, max_tokens=10, tokens_per_fill=1))
    assert outcomes([rl], 10) == [True] * 10
    clock.now += 3.5  # three refills due
    assert outcomes([rl], 4) == [True, True, True, False]


def test_limited_says_when_to_retry_in_whole_seconds() -> None:
    clock = Clock()
    rl = limiter(clock, RateLimit(fill_interval=60, max_tokens=1, tokens_per_fill=1))
    assert isinstance(check_all([rl]), Allowed)
    clock.now += 20.2
    limited = check_all([rl])
    assert isinstance(limited, Limited)
    assert limited.retry_after == 40  # 39.8 s, rounded up
    assert dict(limited.headers()) == {
        b"retry-after": b"40",
        b"x-ratelimit-limit": b"1",
        b"x-ratelimit-remaining": b"0",
        b"x-ratelimit-reset": b"40",
    }
    clock.now += 39.79
    limited = check_all([rl])
    assert isinstance(limited, Limited)
    assert limited.retry_after == 1  # 0.01 s: never 0


def test_a_bucket_that_never_refills_has_no_retry_after() -> None:
    clock = Clock()
    rl = limiter(clock, RateLimit(fill_interval=1, max_tokens=1, tokens_per_fill=0))
    check_all([rl])
    clock.now += 100
    limited = check_all([rl])
    assert isinstance(limited, Limited)
    assert limited.retry_after is None
    assert b"retry-after" not in dict(limited.headers())


def test_allowed_reports_the_tightest_bucket() -> None:
    clock = Clock()
    rl = limiter(
        clock,
        RateLimit(fill_interval=1, max_tokens=100, tokens_per_fill=100),
        RateLimit(fill_interval=60, max_tokens=5, tokens_per_fill=5),
    )
    allowed = check_all([rl])
    assert allowed == Allowed(limit=5, remaining=4, reset=60.0)


def test_a_refused_request_takes_no_token_from_the_other_buckets() -> None:
    clock = Clock()
    listener = limiter(clock, RateLimit(fill_interval=60, max_tokens=3, tokens_per_fill=3))
    route = limiter(clock, RateLimit(fill_interval=60, max_tokens=1, tokens_per_fill=1))
    assert outcomes([listener, route], 3) == [True, False, False]
    # The listener's bucket paid only for the request that passed.
    assert listener.buckets[0].available == 2
    assert (listener.limited, route.limited) == (0, 2)
    other_route = limiter(clock, RateLimit(fill_interval=60, max_tokens=9, tokens_per_fill=9))
    assert outcomes([listener, other_route], 3) == [True, True, False]
    assert listener.limited == 1


def test_no_limiters_no_decision() -> None:
    assert check_all([]) is None


# ---------------------------------------------------------------- the pipeline step


def view(method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None) -> RequestView:
    return RequestView(method, "/x", headers or [], "gw", ("10.0.0.1", 5000))


def test_the_pipeline_answers_429_with_retry_after() -> None:
    clock = Clock()
    policies = RoutePolicies(
        rate_limits=(limiter(clock, RateLimit(fill_interval=30, max_tokens=1, tokens_per_fill=1)),)
    )
    assert isinstance(run_request(policies, view()), Continue)
    answer = run_request(policies, view())
    assert isinstance(answer, Respond)
    assert (answer.status, answer.step, answer.reason) == (429, "localRateLimit", "rate limited")
    assert (b"retry-after", b"30") in answer.headers


def test_requests_refused_by_authorization_spend_no_token() -> None:
    clock = Clock()
    rl = limiter(clock, RateLimit(fill_interval=30, max_tokens=1, tokens_per_fill=1))
    rules = authz.compile_rules(["request.method == 'GET'"], path="p")
    policies = RoutePolicies(authorization=rules, rate_limits=(rl,))
    for _ in range(3):
        denied = run_request(policies, view("DELETE"))
        assert isinstance(denied, Respond) and denied.status == 403
    assert isinstance(run_request(policies, view("GET")), Continue)


def test_cors_preflight_spends_no_token() -> None:
    from agentgw.config.model import Cors

    clock = Clock()
    rl = limiter(clock, RateLimit(fill_interval=30, max_tokens=1, tokens_per_fill=1))
    policies = RoutePolicies(cors=Cors(allow_origins=("*",)), rate_limits=(rl,))
    preflight = view(
        "OPTIONS", [(b"origin", b"https://a"), (b"access-control-request-method", b"GET")]
    )
    for _ in range(3):
        answer = run_request(policies, preflight)
        assert isinstance(answer, Respond) and answer.step == "cors"
    assert isinstance(run_request(policies, view()), Continue)


def test_a_limited_request_gets_429_not_the_direct_response() -> None:
    from agentgw.config.model import DirectResponse

    clock = Clock()
    rl = limiter(clock, RateLimit(fill_interval=30, max_tokens=1, tokens_per_fill=1))
    policies = RoutePolicies(direct_response=DirectResponse(200, "hi"), rate_limits=(rl,))
    first, second = run_request(policies, view()), run_request(policies, view())
    assert isinstance(first, Respond) and isinstance(second, Respond)
    assert (first.status, second.status) == (200, 429)


# ---------------------------------------------------------------- MCP rateLimits


def mcp_limits(clock: Clock, *specs: McpRateLimit) -> McpRateLimits:
    compiled = compile_mcp_limits(specs, path="mcp.rateLimits", clock=clock)
    assert compiled is not None
    return compiled


def caller(sub: str | None = None) -> dict[str, object]:
    claims = {"sub": sub} if sub is not None else None
    return authz.http_variables("POST", "/mcp", "gw", [], "10.0.0.1", 1, claims)


def call(
    limits: McpRateLimits, tool: str | None, target: str = "a", sub: str | None = None
) -> bool:
    method = "tools/call" if tool is not None else "resources/read"
    found = limits.check(method=method, target=target, tool=tool, variables=caller(sub))
    return found is None


def test_a_tool_limit_counts_only_that_tool_on_that_target() -> None:
    clock = Clock()
    spec = McpRateLimit(fill_interval=60, max_tokens=2, tokens_per_fill=2, target="a", tool="echo")
    limits = mcp_limits(clock, spec)
    assert [call(limits, "echo") for _ in range(3)] == [True, True, False]
    assert call(limits, "add")
    assert call(limits, "echo", target="b")
    assert call(limits, None)  # not a tool call
    clock.now += 60
    assert call(limits, "echo")


def test_a_target_limit_counts_every_call_to_it() -> None:
    clock = Clock()
    limits = mcp_limits(clock, McpRateLimit(fill_interval=60, max_tokens=2, target="a"))
    assert [call(limits, "echo"), call(limits, None), call(limits, "add")] == [True, True, False]
    assert call(limits, "add", target="b")


def test_keyed_limits_give_each_caller_a_bucket() -> None:
    clock = Clock()
    spec = McpRateLimit(fill_interval=60, max_tokens=1, tool="echo", key="jwt.sub")
    limits = mcp_limits(clock, spec)
    assert call(limits, "echo", sub="alice")
    assert not call(limits, "echo", sub="alice")
    assert call(limits, "echo", sub="bob")
    # Callers without the claim share one bucket.
    assert call(limits, "echo")
    assert not call(limits, "echo")


def test_keyed_buckets_are_bounded() -> None:
    clock = Clock()
    spec = McpRateLimit(fill_interval=60, max_tokens=1, key="jwt.sub")
    limits = mcp_limits(clock, spec)
    for i in range(MAX_KEYS + 10):
        assert call(limits, "echo", sub=f"user{i}")
    (limit,) = limits.limits
    assert len(limit.buckets) == MAX_KEYS
    assert not call(limits, "echo", sub=f"user{MAX_KEYS + 9}")  # recent: still empty
    assert call(limits, "echo", sub="user0")  # dropped long ago: starts full again


def test_mcp_limit_error_is_json_rpc_32000_with_retry_after() -> None:
    clock = Clock()
    limits = mcp_limits(clock, McpRateLimit(fill_interval=10, max_tokens=1, tokens_per_fill=1))
    assert call(limits, "echo")
    clock.now += 2.5
    limited = limits.check(method="tools/call", target="a", tool="echo", variables=caller())
    assert isinstance(limited, Limited)
    assert limited.path == "mcp.rateLimits[0]"
    error = limited.error()
    assert error.status == 429
    assert error.rpc_error(7) == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": SERVER_ERROR, "message": "rate limited", "data": {"retryAfter": 8}},
    }


def test_all_matching_limits_must_have_a_token() -> None:
    clock = Clock()
    per_tool = McpRateLimit(fill_interval=60, max_tokens=5, tool="echo")
    per_target = McpRateLimit(fill_interval=60, max_tokens=1, target="a")
    limits = mcp_limits(clock, per_tool, per_target)
    assert call(limits, "echo")
    assert not call(limits, "echo")
    tool_bucket = limits.limits[0].buckets[""]
    assert tool_bucket.available == 4  # the refused call took nothing


def test_a_bad_key_expression_is_a_config_error_with_its_path() -> None:
    spec = McpRateLimit(fill_interval=1, key="jwt.sub ==")
    with pytest.raises(ConfigError) as info:
        compile_mcp_limits(
            [spec], path="binds[0].listeners[0].routes[0].backends[0].mcp.rateLimits"
        )
    (error,) = info.value.errors
    assert error.startswith(
        "binds[0].listeners[0].routes[0].backends[0].mcp.rateLimits[0].key: invalid CEL expression"
    )


def test_no_limits_compile_to_none() -> None:
    assert compile_mcp_limits([], path="x") is None
