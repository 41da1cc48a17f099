"""An engine's load figures and asleep signal from parsed series, per its EngineMetricsSpec."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from shared.engines import AsleepSignal, EngineMetricsSpec

SeriesByName = Mapping[str, Sequence[tuple[Mapping[str, str], float]]]

# Ranks that split one model across devices (tensor, pipeline, expert parallel) all report
# the same requests, so their series are copies, not additions: SGLang with TP=8 emits
# num_running_reqs once per tp_rank. Data-parallel ranks (dp_rank, vLLM's engine) are
# separate request sets and are summed.
REPLICA_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank"})


@dataclass(frozen=True, slots=True)
class Extracted:
    """One member's figures; None when the engine does not expose that figure."""

    waiting_queue: float | None
    running_req: float | None
    cache_usage: float | None
    extra: dict[str, float] = field(default_factory=dict)
    asleep_reason: str | None = None
    """Set when a series of ``spec.asleep`` says the engine is asleep: which one and its value."""

    @property
    def found(self) -> bool:
        """True when at least one of the three load figures is present."""
        return not (self.waiting_queue is None and self.running_req is None
                    and self.cache_usage is None)


def wanted_names(spec: EngineMetricsSpec) -> frozenset[str]:
    """Every sample name ``extract`` may read for ``spec`` (what to parse)."""
    return frozenset(
        [*spec.waiting_queue, *spec.running_req, *spec.cache_usage, *spec.extra.values(),
         *(signal.metric for signal in spec.asleep), *(f.metric for f in spec.flags.values())]
    )


def extract(series_by_name: SeriesByName, spec: EngineMetricsSpec) -> Extracted:
    """Waiting/running counts (summed), KV usage (max or mean, scaled, clamped) and extras."""
    waiting = _first_present(series_by_name, spec.waiting_queue)
    running = _first_present(series_by_name, spec.running_req)
    usage = _first_present(series_by_name, spec.cache_usage)
    extra: dict[str, float] = {}
    for out_name, metric in spec.extra.items():
        values = _first_present(series_by_name, [metric])
        if values is not None:
            extra[out_name] = math.fsum(values)
    for out_name, flag in spec.flags.items():
        said = next((labels[flag.label] for labels, _value in series_by_name.get(flag.metric, ())
                     if flag.label in labels), None)
        if said is not None:
            extra[out_name] = 1.0 if said in flag.true_values else 0.0
    return Extracted(
        waiting_queue=None if waiting is None else max(0.0, math.fsum(waiting)),
        running_req=None if running is None else max(0.0, math.fsum(running)),
        cache_usage=None if usage is None else _usage_ratio(usage, spec),
        extra=extra,
        asleep_reason=asleep_reason(series_by_name, spec.asleep),
    )


def asleep_reason(series_by_name: SeriesByName, signals: Iterable[AsleepSignal]) -> str | None:
    """The first signal with a matching sample that means asleep, as ``metric{labels}=value``.

    Any one matching sample is enough: an engine with one data-parallel rank asleep
    would still hang the requests that rank receives.
    """
    for signal in signals:
        for labels, value in series_by_name.get(signal.metric, ()):
            if not math.isfinite(value) or (value == 0) != (signal.when == "zero"):
                continue
            if all(labels.get(name) == wanted for name, wanted in signal.labels.items()):
                selector = ",".join(f"{name}={wanted}" for name, wanted in signal.labels.items())
                return f"{signal.metric}{{{selector}}}={value:g}" if selector \
                    else f"{signal.metric}={value:g}"
    return None


def _first_present(series_by_name: SeriesByName, names: Iterable[str]) -> list[float] | None:
    """Values of the first name that has a finite sample; replica copies collapsed."""
    for name in names:
        series = [(labels, value) for labels, value in series_by_name.get(name, ())
                  if math.isfinite(value)]
        if series:
            return _collapse_replicas(series)
    return None


def _collapse_replicas(series: list[tuple[Mapping[str, str], float]]) -> list[float]:
    """One value per distinct request set: series differing only in replica ranks → their max."""
    if len(series) == 1:
        return [series[0][1]]
    groups: dict[frozenset[tuple[str, str]], float] = {}
    for labels, value in series:
        key = frozenset(item for item in labels.items() if item[0] not in REPLICA_LABELS)
        previous = groups.get(key)
        groups[key] = value if previous is None else max(previous, value)
    return list(groups.values())


def _usage_ratio(values: list[float], spec: EngineMetricsSpec) -> float:
    if spec.cache_usage_aggregate == "max":
        combined = max(values)
    else:
        combined = math.fsum(values) / len(values)
    return min(1.0, max(0.0, combined * spec.cache_usage_scale))
