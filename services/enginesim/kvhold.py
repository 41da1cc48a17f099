"""Disaggregated serving: a prefill engine holds a request's KV blocks until a decode pulls them.

As vLLM's NixlConnector does: a request finished with ``do_remote_decode`` keeps its blocks
(they count in KV usage) until the decode engine that read them says so, or until the lease
runs out (``kv_lease_duration``, 30 s in vLLM 0.32). The decode engine's notice is an HTTP
call here (``POST /_sim/kv/release`` on the prefill), NIXL's is a side-channel message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from services.enginesim.kvcache import BlockPool

log = logging.getLogger("llmsched.enginesim.kv")

KV_LEASE_S = 30.0
RELEASE_PATH = "/_sim/kv/release"
RELEASE_TIMEOUT_S = 2.0


class HeldKV:
    """Blocks of finished prefills kept for their decode, by request id, each with a deadline."""

    def __init__(self, pool: BlockPool, lease_s: float = KV_LEASE_S) -> None:
        self.pool = pool
        self.lease_s = lease_s
        self._held: dict[str, tuple[list[int], float]] = {}
        self.expired = 0
        self.released = 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, rid: str, blocks: list[int], now: float) -> None:
        """Keep ``blocks`` (one more reference each) until released or the lease ends."""
        self.pool.take(blocks)
        self._held[rid] = (list(blocks), now + self.lease_s)

    def release(self, rid: str) -> bool:
        """The decode has the KV: free the blocks. False when not held (expired, unknown)."""
        held = self._held.pop(rid, None)
        if held is None:
            return False
        self.pool.release(held[0])
        self.released += 1
        return True

    def expire(self, now: float) -> int:
        """Free the blocks whose lease ran out; returns how many requests."""
        gone = [rid for rid, (_, until) in self._held.items() if until <= now]
        for rid in gone:
            self.pool.release(self._held.pop(rid)[0])
        self.expired += len(gone)
        if gone:
            log.info("KV of %d prefilled request(s) freed: no decode pulled it within %gs",
                     len(gone), self.lease_s)
        return len(gone)

    def next_expiry(self) -> float | None:
        return min((until for _, until in self._held.values()), default=None)

    def clear(self) -> None:
        """Drop everything held (a sleep that discards the KV cache)."""
        for blocks, _ in self._held.values():
            self.pool.release(blocks)
        self._held.clear()


def release_target(params: dict[str, Any]) -> tuple[str, int, str] | None:
    """(host, port, request id) of the prefill to notify, from a decode's kv_transfer_params."""
    host, port, rid = (params.get("remote_host"), params.get("remote_port"),
                       params.get("remote_request_id"))
    if not params.get("do_remote_prefill") or not isinstance(host, str) \
            or not isinstance(port, int) or not isinstance(rid, str):
        return None
    return host, port, rid


async def notify_release(host: str, port: int, rid: str) -> bool:
    """Tell the prefill at ``host:port`` that request ``rid``'s KV was pulled."""
    body = json.dumps({"request_id": rid}).encode()
    head = (f"POST {RELEASE_PATH} HTTP/1.1\r\nhost: {host}:{port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()
    writer = None
    try:
        async with asyncio.timeout(RELEASE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(head + body)
            status = await reader.readline()
        return b" 200 " in status
    except (OSError, TimeoutError) as err:
        log.info("KV release of %s at %s:%d not delivered (%s); it expires there instead",
                 rid, host, port, err)
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
