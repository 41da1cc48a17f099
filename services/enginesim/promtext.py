"""Prometheus text exposition (format 0.0.4 as prometheus_client writes it)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from services.enginesim.stats import Histogram

Labels = Mapping[str, str]
CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"


def fmt_value(value: float) -> str:
    """A sample value the way prometheus_client prints it (Go-style exponents for big floats)."""
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6 and "e" not in text:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def fmt_labels(labels: Labels) -> str:
    """``{a="1",b="2"}`` with keys sorted, or an empty string."""
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(labels[k])}"' for k in sorted(labels))
    return "{" + inner + "}"


class Exposition:
    """Accumulates metric families and renders the text body."""

    # created=False, sum_first=True mimic SGLang's multiprocess registry, which has no
    # _created families and prints a histogram's _sum before its buckets.

    def __init__(self, created: bool = True, sum_first: bool = False) -> None:
        self._lines: list[str] = []
        self._created = created
        self._sum_first = sum_first

    def _header(self, name: str, help_text: str, kind: str) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")

    def gauge(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        """A gauge family."""
        self._header(name, help_text, "gauge")
        self._lines.extend(f"{name}{fmt_labels(lb)} {fmt_value(v)}" for lb, v in samples)

    def counter(self, name: str, help_text: str,
                samples: Iterable[tuple[Labels, float, float]]) -> None:
        """A counter family ``name_total`` (+ ``_created``); samples: (labels, value, created)."""
        rows = list(samples)
        self._header(f"{name}_total", help_text, "counter")
        self._lines.extend(f"{name}_total{fmt_labels(lb)} {fmt_value(v)}" for lb, v, _ in rows)
        if self._created and rows:
            self.gauge(f"{name}_created", help_text, ((lb, c) for lb, _, c in rows))

    def counter_plain(self, name: str, help_text: str,
                      samples: Iterable[tuple[Labels, float]]) -> None:
        """A counter exposed under its full name with no ``_created`` (collector-style)."""
        self._header(name, help_text, "counter")
        self._lines.extend(f"{name}{fmt_labels(lb)} {fmt_value(v)}" for lb, v in samples)

    def histogram(self, name: str, help_text: str,
                  series: Iterable[tuple[Labels, Histogram, float]]) -> None:
        """A histogram family (+ ``_created``); series are (labels, histogram, created)."""
        rows = list(series)
        self._header(name, help_text, "histogram")
        out = self._lines
        for labels, hist, _ in rows:
            base = fmt_labels(labels)
            if self._sum_first:
                out.append(f"{name}_sum{base} {fmt_value(hist.sum)}")
            bounds = [*hist.bounds, math.inf]
            for bound, total in zip(bounds, hist.cumulative(), strict=True):
                le = fmt_labels({**labels, "le": fmt_value(bound)})
                out.append(f"{name}_bucket{le} {fmt_value(total)}")
            out.append(f"{name}_count{base} {fmt_value(hist.count)}")
            if not self._sum_first:
                out.append(f"{name}_sum{base} {fmt_value(hist.sum)}")
        if self._created and rows:
            self.gauge(f"{name}_created", help_text, ((lb, c) for lb, _, c in rows))

    def summary(self, name: str, help_text: str,
                series: Iterable[tuple[Labels, int, float, float]]) -> None:
        """A summary without quantiles; series are (labels, count, sum, created)."""
        rows = list(series)
        self._header(name, help_text, "summary")
        for labels, count, total, _ in rows:
            self._lines.append(f"{name}_count{fmt_labels(labels)} {fmt_value(count)}")
            self._lines.append(f"{name}_sum{fmt_labels(labels)} {fmt_value(total)}")
        if self._created and rows:
            self.gauge(f"{name}_created", help_text, ((lb, c) for lb, _, _, c in rows))

    def header_only(self, name: str, help_text: str, kind: str) -> None:
        """A family with no samples yet (labelled families before first use)."""
        self._header(name, help_text, kind)

    def text(self) -> str:
        """The whole body, newline-terminated."""
        return "\n".join(self._lines) + "\n"
