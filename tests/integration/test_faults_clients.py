"""Clients that send their request body slowly, or never, on the API's select and gateway routes.

Allowed: a client that stops sending its body for BODY_IDLE_S gets ``408`` and its
connection closed (it held a socket and a coroutine that long). Not allowed: a slow but
steady client refused, a silent one held for ever, or anyone else's request failing
meanwhile. (A client leaving mid-body at the worker: test_worker_disconnect.py.)
"""

from __future__ import annotations

import asyncio
import time

import pytest

from services.api.gateway.body import BODY_IDLE_S
from tests.integration.fleet import FAKE, MakeFleet
from tests.integration.load_helpers import Traffic
from tests.integration.select_traffic import SelectTraffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SILENT_CLIENTS = 20
CUT_WITHIN_S = BODY_IDLE_S + 10
"""When a silent client's connection must be closed by (generous for a busy box)."""


async def _post_partly(port: int, path: str, body: bytes, *, sent: int,
                       pause_s: float = 0.0, pieces: int = 1) -> tuple[bytes, float]:
    """POST ``path`` announcing ``len(body)`` bytes, send the first ``sent`` in ``pieces``
    with ``pause_s`` between them, then wait: (what came back, seconds until the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    head = (b"POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")
    writer.write(head % (path.encode(), len(body)))
    step = max(1, sent // pieces)
    for i in range(0, sent, step):
        writer.write(body[i:min(i + step, sent)])
        await writer.drain()
        if pause_s:
            await asyncio.sleep(pause_s)
    try:
        answer = await asyncio.wait_for(reader.read(-1), CUT_WITHIN_S + 5)
    except TimeoutError:
        answer = b"(still open)"
    took = time.monotonic() - started
    writer.close()
    return answer, took


async def test_slow_bodies_are_served_and_silent_ones_cut_without_hurting_others(
        make_fleet: MakeFleet) -> None:
    fleet = await make_fleet(autoscaling={"min_replicas": 1, "max_replicas": 1},
                             gateway={"max_ongoing_requests": SILENT_CLIENTS},
                             global_={"select_timeout_ms": 3000})
    await fleet.register({**FAKE, "fake_delay_ms": 20, "fake_capacity": 16})
    await fleet.wait_states("fake-model", lambda s: list(s.values()) == ["ACTIVE"], 60,
                            "one ACTIVE instance")
    port = int(fleet.api.rsplit(":", 1)[1])
    chat = (b'{"model": "fake-model", "max_tokens": 4, '
            b'"messages": [{"role": "user", "content": "hello"}]}')
    select = b'{"pool_name": "p-none", "members": ["10.0.0.1:80"]}'
    # Silent clients on both routes: as many as the gateway's max_ongoing_requests.
    silent = [asyncio.create_task(_post_partly(port, "/v1/chat/completions", chat, sent=10))
              for _ in range(SILENT_CLIENTS // 2)]
    silent += [asyncio.create_task(_post_partly(port, "/scheduler/select", select, sent=10))
               for _ in range(SILENT_CLIENTS // 2)]
    # Slow but steady: the body in 5 pieces over about 2 s.
    slow_chat = asyncio.create_task(_post_partly(port, "/v1/chat/completions", chat,
                                                 sent=len(chat), pieces=5, pause_s=0.4))
    slow_select = asyncio.create_task(_post_partly(port, "/scheduler/select", select,
                                                   sent=len(select), pieces=5, pause_s=0.4))
    others = SelectTraffic(fleet.api, {"pool_name": "p-none", "members": ["10.0.0.1:80"]},
                           concurrency=2, answers=frozenset(["none"])).start()
    gateway = Traffic(fleet.api, "fake-model", concurrency=2).start()
    try:
        cut = await asyncio.gather(*silent)
        served_chat, _ = await slow_chat
        served_select, _ = await slow_select
    finally:
        await others.stop()
        await gateway.stop()
    seen = (f"silent: {[(a[:40], round(t, 1)) for a, t in cut][:4]}...; slow chat: "
            f"{served_chat[:60]!r}; slow select: {served_select[:60]!r}; others: "
            f"{others.summary().most_common(3)}; gateway failures: {gateway.failures[:3]}")
    print(seen)
    assert served_chat.startswith(b"HTTP/1.1 200"), seen
    assert served_select.startswith(b"HTTP/1.1 200") and served_select.endswith(b"none"), seen
    assert all(answer.startswith(b"HTTP/1.1 408") for answer, _ in cut), seen
    assert all(took <= CUT_WITHIN_S for _, took in cut), seen
    assert others.ok >= 20 and not others.failures, seen
    assert gateway.ok >= 20 and not gateway.failures, seen
