"""The scheduler calls of one loop pass leave as one request, each caller gets its own item."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.api.ask_batch import AskBatch
from services.api.scheduler_errors import SchedulerError, SchedulerUnavailable


class Scheduler:
    """Answers like the scheduler's endpoints: one document, or an array for ``many``."""

    def __init__(self, fail: Exception | None = None, answer: bytes | None = None) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.fail = fail
        self.answer = answer

    async def ask(self, subject: str, payload: bytes) -> bytes:
        self.calls.append((subject, payload))
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        if self.answer is not None:
            return self.answer
        if subject == "many":
            return json.dumps([{"echo": item} for item in json.loads(payload)]).encode()
        return json.dumps({"echo": json.loads(payload)}).encode()


async def test_calls_of_one_pass_go_together_and_each_gets_its_own_answer() -> None:
    scheduler = Scheduler()
    batch = AskBatch(scheduler.ask, "one", "many")
    replies = await asyncio.gather(*(batch.ask(json.dumps({"i": i}).encode())
                                     for i in range(10)))
    assert [json.loads(r) for r in replies] == [{"echo": {"i": i}} for i in range(10)]
    assert [subject for subject, _ in scheduler.calls] == ["many"], scheduler.calls
    assert json.loads(scheduler.calls[0][1]) == [{"i": i} for i in range(10)]


async def test_a_lone_call_goes_to_the_single_endpoint() -> None:
    scheduler = Scheduler()
    batch = AskBatch(scheduler.ask, "one", "many")
    for i in range(3):  # one after the other: each alone in its pass
        assert json.loads(await batch.ask(b'{"i": %d}' % i)) == {"echo": {"i": i}}
    assert [subject for subject, _ in scheduler.calls] == ["one"] * 3, scheduler.calls


async def test_a_full_batch_leaves_at_once_and_the_rest_follows() -> None:
    scheduler = Scheduler()
    batch = AskBatch(scheduler.ask, "one", "many", limit=4)
    replies = await asyncio.gather(*(batch.ask(b"%d" % i) for i in range(10)))
    assert [json.loads(r)["echo"] for r in replies] == list(range(10))
    sizes = [len(json.loads(p)) if s == "many" else 1 for s, p in scheduler.calls]
    assert sizes == [4, 4, 2], scheduler.calls


@pytest.mark.parametrize("error", [SchedulerUnavailable("TimeoutError"),
                                   SchedulerError(400, "bad batch")])
async def test_a_failed_batch_fails_every_caller_with_its_own_error(error: Exception) -> None:
    batch = AskBatch(Scheduler(fail=error).ask, "one", "many")
    results = await asyncio.gather(*(batch.ask(b"1") for _ in range(3)),
                                   return_exceptions=True)
    assert all(type(r) is type(error) and str(r) == str(error) for r in results), results
    assert len({id(r) for r in results}) == 3, "one exception object shared by all callers"
    if isinstance(error, SchedulerError):
        assert all(isinstance(r, SchedulerError) and r.code == 400 for r in results)


@pytest.mark.parametrize("answer", [b"not json", b'[{"a": 1}]', b'{"a": 1}'])
async def test_an_answer_that_does_not_fit_the_batch_is_unavailable(answer: bytes) -> None:
    batch = AskBatch(Scheduler(answer=answer).ask, "one", "many")
    results = await asyncio.gather(*(batch.ask(b"1") for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, SchedulerUnavailable) for r in results), results


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    scheduler = Scheduler()
    batch = AskBatch(scheduler.ask, "one", "many")
    gone = asyncio.ensure_future(batch.ask(b"0"))
    kept = asyncio.ensure_future(batch.ask(b"1"))
    await asyncio.sleep(0)
    gone.cancel()
    assert json.loads(await kept) == {"echo": 1}
    assert gone.cancelled()


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        AskBatch(Scheduler().ask, "one", "many", limit=0)
