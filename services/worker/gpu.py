"""GPU discovery (nvidia-smi) and the figures the worker reports as ``gpu_info``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass

from services.worker.models import GpuInfo

log = logging.getLogger("llmsched.worker")

QUERY = "--query-gpu=index,name,memory.total,memory.free,utilization.gpu"
CACHE_S = 2.0
GPU_ENV = "LLMSCHED_GPU"


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as nvidia-smi reports it."""

    index: int
    name: str
    total_gb: float
    free_gb: float
    utilization: float
    """0..1."""


def _number(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return 0.0  # "[N/A]" on some boards


def parse_nvidia_smi(text: str) -> list[GpuDevice]:
    """Parse ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` output (MiB, %)."""
    devices = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        devices.append(GpuDevice(index=int(parts[0]), name=parts[1],
                                 total_gb=_number(parts[2]) / 1024,
                                 free_gb=_number(parts[3]) / 1024,
                                 utilization=_number(parts[4]) / 100))
    return devices


def visible(devices: list[GpuDevice], cuda_visible: str | None) -> list[GpuDevice]:
    """The devices a process with this CUDA_VISIBLE_DEVICES would use (all when unset)."""
    if not cuda_visible:
        return devices
    wanted = {p.strip() for p in cuda_visible.split(",")}
    return [d for d in devices if str(d.index) in wanted]


def summarise(devices: Iterable[GpuDevice]) -> GpuInfo | None:
    """Free memory summed and utilization averaged over ``devices``; None when there are none."""
    devs = list(devices)
    if not devs:
        return None
    return GpuInfo(available_memory_gb=round(sum(d.free_gb for d in devs), 3),
                   utilization=round(sum(d.utilization for d in devs) / len(devs), 4),
                   total_memory_gb=round(sum(d.total_gb for d in devs), 3), source="nvidia-smi")


def gpu_present() -> bool:
    """True on a GPU host: ``LLMSCHED_GPU=1|0`` decides, else whether nvidia-smi exists."""
    forced = os.environ.get(GPU_ENV, "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    return shutil.which("nvidia-smi") is not None


class GpuProbe:
    """Reads nvidia-smi at most every CACHE_S seconds; no GPU means an empty list."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._cached: list[GpuDevice] = []
        self._at = -CACHE_S
        self._lock = asyncio.Lock()

    async def devices(self) -> list[GpuDevice]:
        """The host's GPUs (cached briefly)."""
        if not self.enabled:
            return []
        async with self._lock:
            if time.monotonic() - self._at >= CACHE_S:
                self._cached = await self._query()
                self._at = time.monotonic()
            return self._cached

    async def _query(self) -> list[GpuDevice]:
        try:
            proc = await asyncio.create_subprocess_exec(
                "nvidia-smi", QUERY, "--format=csv,noheader,nounits",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        except OSError as err:
            log.warning("nvidia-smi failed: %s", err)
            return []
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 3.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            log.warning("nvidia-smi timed out")
            return []
        return parse_nvidia_smi(out.decode(errors="replace"))
