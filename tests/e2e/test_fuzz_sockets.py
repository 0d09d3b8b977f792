"""The socket fuzz run (``tests.fuzz.sockets``), bounded for ``make test``:
random and mutated requests against a gateway with a recording upstream.
``AGENTGW_FUZZ_SEED`` and ``AGENTGW_FUZZ_CASES`` change the run; the long
run is ``python -m tests.fuzz.run``."""

from __future__ import annotations

import os
import random

from tests.fuzz.sockets import Results, fuzz, open_target, run_case

SEED = int(os.environ.get("AGENTGW_FUZZ_SEED", "20261203"))
CASES = int(os.environ.get("AGENTGW_FUZZ_CASES", "150"))


async def test_mutated_requests_leave_the_gateway_serving() -> None:
    async with open_target() as target:
        results = await fuzz(target, random.Random(SEED), cases=CASES)
    assert results.cases == CASES
    assert not results.violations, "\n".join(results.violations[:20])
    # The run exercised both sides: refusals and forwarded requests.
    assert results.forwarded > 0
    assert sum(n for outcome, n in results.outcomes.items() if "gateway" in outcome) > 0


async def test_the_harness_notices_what_must_not_pass() -> None:
    """With underscore headers let through on purpose, the run reports the
    case: the checks can fail."""
    async with open_target(allowUnderscoreHeaders=True) as target:
        results = Results()
        await run_case(target, b"GET / HTTP/1.1\r\nHost: gw.test\r\nX_User: a\r\n\r\n", results)
        await run_case(target, b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n", results)
    assert len(results.violations) == 1
    assert "underscore" in results.violations[0]
