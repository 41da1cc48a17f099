"""The python_gc_* / python_info / process_* families every prometheus_client app exposes."""

from __future__ import annotations

import gc
import os
import platform
import resource

from services.enginesim.promtext import Exposition


def _proc_stat() -> tuple[float, float, float, float]:
    """(virtual bytes, resident bytes, cpu seconds, start time) from /proc; zeros elsewhere."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as fh:
            btime = next(float(line.split()[1]) for line in fh if line.startswith("btime"))
    except (OSError, StopIteration, IndexError):
        return 0.0, 0.0, 0.0, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    page = resource.getpagesize()
    utime, stime, start = float(fields[11]), float(fields[12]), float(fields[19])
    cpu = (utime + stime) / ticks
    return float(fields[20]), float(fields[21]) * page, cpu, btime + start / ticks


def _open_fds() -> float:
    try:
        return float(len(os.listdir("/proc/self/fd")))
    except OSError:
        return 0.0


def render_process(out: Exposition) -> None:
    """Append the process and interpreter families."""
    stats = gc.get_stats()
    gens = [{"generation": str(i)} for i in range(len(stats))]
    out.counter_plain("python_gc_objects_collected_total", "Objects collected during gc",
                      [(g, float(s["collected"])) for g, s in zip(gens, stats, strict=True)])
    out.counter_plain("python_gc_objects_uncollectable_total",
                      "Uncollectable objects found during GC",
                      [(g, float(s["uncollectable"])) for g, s in zip(gens, stats, strict=True)])
    out.counter_plain("python_gc_collections_total",
                      "Number of times this generation was collected",
                      [(g, float(s["collections"])) for g, s in zip(gens, stats, strict=True)])
    major, minor, patch = platform.python_version_tuple()
    out.gauge("python_info", "Python platform information", [(
        {"implementation": platform.python_implementation(), "major": major, "minor": minor,
         "patchlevel": patch, "version": platform.python_version()}, 1.0)])
    vmem, rss, cpu, start = _proc_stat()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    out.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", [({}, vmem)])
    out.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", [({}, rss)])
    out.gauge("process_start_time_seconds",
              "Start time of the process since unix epoch in seconds.", [({}, start)])
    out.counter_plain("process_cpu_seconds_total",
                      "Total user and system CPU time spent in seconds.", [({}, cpu)])
    out.gauge("process_open_fds", "Number of open file descriptors.", [({}, _open_fds())])
    out.gauge("process_max_fds", "Maximum number of open file descriptors.", [({}, float(soft))])
