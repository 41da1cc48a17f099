"""Read a service's /metrics the way Prometheus does, and the names a PromQL query uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                             "_created"),
            "summary": ("_sum", "_count", "_created"), "info": ("_info",)}


class Exported:
    """One /metrics answer: family name → type, and every series name it may carry."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def series_names(self) -> set[str]:
        """Names a query can use: gauges as they are, counters with _total, histograms' parts."""
        names: set[str] = set()
        for name, kind in self.types.items():
            suffixes = SUFFIXES.get(kind, ())
            names.update(name + s for s in suffixes) if suffixes else names.add(name)
        return names | set(self.samples)

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(v for got, v in self.samples.get(name, [])
                   if all(got.get(k) == want for k, want in labels.items()))


async def scrape(http: httpx.AsyncClient, url: str) -> Exported:
    r = await http.get(url)
    assert r.status_code == 200, f"GET {url} → {r.status_code}: {r.text[:300]}"
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return Exported(r.text)


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                      "and", "or", "unless", "offset", "inf", "nan", "le"})


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels, keywords left out)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables outside matchers
    names = set()
    for match in _WORD.finditer(text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue  # a function or an aggregation
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent of a number such as 1e3
        names.add(word)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' panels included."""
    out: list[tuple[str, str]] = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((str(panel.get("title", "?")), str(target["expr"])))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and query.startswith("label_values("):
            inner = query[len("label_values("):].rsplit(",", 1)[0]
            out.append((f"variable {variable.get('name')}", inner))
    return out


def load_dashboards() -> dict[str, dict[str, Any]]:
    found = {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}
    assert found, f"no dashboard JSON in {DASHBOARDS}"
    return found


def dashboard_problems(dashboard: dict[str, Any], exported: set[str]) -> list[str]:
    """Every query that names a series no service exports."""
    problems = []
    queries = dashboard_queries(dashboard)
    if not queries:
        problems.append("the dashboard has no PromQL query")
    for title, expr in queries:
        names = promql_metric_names(expr)
        if not names:
            problems.append(f"{title}: {expr!r} names no metric")
        problems.extend(f"{title}: {name} is not exported (query {expr!r})"
                        for name in sorted(names - exported))
    return problems
