"""cancel_and_wait: tasks that lose a cancel still end; ones that never end are reported."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from shared.tasks import cancel_and_wait


async def _loses_cancels(lost: int, ended: list[str]) -> None:
    """Loses the first ``lost`` cancels that reach it (returns from them to its loop)."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if lost == 0:
                ended.append("cancelled")
                raise
            lost -= 1


@pytest.mark.parametrize("lost", [0, 1, 3])
async def test_a_task_ends_however_many_cancels_it_loses(
        lost: int, caplog: pytest.LogCaptureFixture) -> None:
    ended: list[str] = []
    task = asyncio.create_task(_loses_cancels(lost, ended), name="loop under test")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="llmsched.tasks"):
        left = await asyncio.wait_for(cancel_and_wait([task], retry_s=0.05), 10)
    assert left == set() and task.cancelled() and ended == ["cancelled"], (left, task, ended)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == (["Task loop under test ignored a cancel; cancelling it again"]
                        if lost else []), warnings


async def test_a_task_that_never_ends_is_returned_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
    task = asyncio.create_task(stubborn(), name="stubborn")
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="llmsched.tasks"):
        left = await cancel_and_wait([task, done], retry_s=0.05, give_up_s=0.3)
    assert left == {task}, left
    assert any("still running 0.3s after being cancelled: stubborn" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    stop.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_nothing_to_wait_for() -> None:
    assert await cancel_and_wait([]) == set()
