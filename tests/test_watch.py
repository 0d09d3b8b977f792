"""``server.watch``: the lazy watch over a request's client."""

from __future__ import annotations

import trio

from agentgw.server.watch import GRACE, run_watched, wait_watched


async def test_a_task_that_outlives_its_request_never_starts_a_watcher(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A task the work starts elsewhere (an upstream's GET stream) inherits
    # the watch; once the request is over and its connection's nursery is
    # closed, its long waits must not try to start a watcher there.
    waited = trio.Event()

    async def long_wait() -> None:
        await trio.sleep(10 * GRACE)

    async def outlives_the_request() -> None:
        await wait_watched(long_wait)
        waited.set()

    async with trio.open_nursery() as elsewhere:
        async with trio.open_nursery() as connection:

            async def work() -> None:
                elsewhere.start_soon(outlives_the_request)

            assert not await run_watched(trio.sleep_forever, connection, work)
    assert waited.is_set()


async def test_a_client_that_goes_away_cancels_the_work(autojump_clock: trio.abc.Clock) -> None:
    finished = False

    async def work() -> None:
        nonlocal finished
        await wait_watched(trio.sleep_forever)
        finished = True

    async def client_leaves() -> None:
        await trio.sleep(1)

    async with trio.open_nursery() as connection:
        assert await run_watched(client_leaves, connection, work)
    assert not finished
