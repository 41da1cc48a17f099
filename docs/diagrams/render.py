"""Draws the PNG diagrams of README.md and docs/ (architecture and two sequence diagrams).

matplotlib is not a project dependency; run this with a throwaway virtualenv:

    python3 -m venv /tmp/mpl && /tmp/mpl/bin/pip install matplotlib
    /tmp/mpl/bin/python docs/diagrams/render.py      # writes docs/diagrams/*.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parent
DPI = 110
INK = "#1f2933"
MUTED = "#52606d"
FILL = {"client": "#e3f2fd", "api": "#fff3e0", "bus": "#ede7f6", "svc": "#e8f5e9",
        "store": "#fce4ec", "engine": "#f1f8e9", "note": "#fffde7", "ext": "#eceff1"}
BUS = "#5e35b1"
HTTP = "#1565c0"
STORE = "#ad1457"


def box(ax: Axes, x: float, y: float, w: float, h: float, title: str, lines: tuple[str, ...] = (),
        fill: str = "svc", size: float = 10.5) -> None:
    """A rounded box with a bold title and smaller lines under it."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                fc=FILL[fill], ec=INK, lw=1.2))
    ax.text(x + w / 2, y + h - 0.22, title, ha="center", va="top", fontsize=size,
            fontweight="bold", color=INK)
    for i, line in enumerate(lines):
        ax.text(x + w / 2, y + h - 0.62 - 0.34 * i, line, ha="center", va="top",
                fontsize=size - 2, color=MUTED)


def arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], label: str = "",
          color: str = INK, *, dashed: bool = False, both: bool = False, rad: float = 0.0,
          at: float = 0.5, dx: float = 0.0, dy: float = 0.12, ha: str = "center",
          size: float = 8.5) -> None:
    """An arrow with an optional label placed at fraction ``at`` along it."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="<|-|>" if both else "-|>",
                                 mutation_scale=13, color=color, lw=1.4,
                                 linestyle="--" if dashed else "-",
                                 connectionstyle=f"arc3,rad={rad}"))
    if label:
        x = start[0] + (end[0] - start[0]) * at + dx
        y = start[1] + (end[1] - start[1]) * at + dy
        ax.text(x, y, label, ha=ha, va="bottom", fontsize=size, color=color,
                bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 1.0})


def canvas(width: float, height: float) -> tuple[plt.Figure, Axes]:
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def architecture() -> None:
    """Services, the NATS subjects between them, Redis, engines and the two kinds of client."""
    fig, ax = canvas(18.6, 11.2)
    ax.text(0.3, 10.9, "llmsched: architecture", fontsize=15, fontweight="bold", va="top")
    ax.text(0.3, 10.45, "blue = HTTP   purple = NATS (subjects under global.prefix, default "
            "llmsched)   dashed red = Redis", fontsize=9.5, color=MUTED, va="top")

    box(ax, 0.4, 8.6, 3.6, 1.3, "operator", ("/admin/*, /pools/*, /docs",), "client")
    box(ax, 4.6, 8.6, 3.6, 1.3, "F5 BIG-IP", ("iRule sideband call",), "client")
    box(ax, 8.8, 8.6, 3.6, 1.3, "OpenAI clients", ("SDK, curl: /v1/*",), "client")

    box(ax, 0.4, 5.9, 12.0, 2.0, "API service  (llmsched api, N processes on one socket)",
        (), "api")
    parts = [("admin + registry", "/admin/models*, /admin/status,", "/workers/*, /admin/workers"),
             ("status, analysis", "/pools/*/status, simulate,", "analyze, /health /readyz"),
             ("select fast path", "POST /scheduler/select", "→ member | none | fallback"),
             ("OpenAI gateway", "/v1/chat/completions, /v1/completions;", "routes in-process (decide: local)")]
    for i, (title, a, b) in enumerate(parts):
        box(ax, 0.6 + 2.95 * i, 6.05, 2.75, 1.3, title, (a, b), "note", size=9.5)

    ax.add_patch(FancyBboxPatch((0.4, 4.55), 12.0, 0.75, boxstyle="round,pad=0.02",
                                fc=FILL["bus"], ec=BUS, lw=1.5))
    ax.text(6.4, 4.92, "NATS", ha="center", va="center", fontsize=12, fontweight="bold",
            color=BUS)

    box(ax, 0.4, 2.3, 3.6, 1.6, "collector", ("F5 / static / workers", "membership; scrapes",
                                              "engine /metrics"))
    box(ax, 4.6, 2.3, 3.6, 1.6, "scheduler ×N", ("nats.micro queue group:", "pools in memory,",
                                                 "in-flight counts"))
    box(ax, 8.8, 2.3, 3.6, 1.6, "autoscaler ×N", ("one leads (Redis lease):", "wake, start,",
                                                  "drain + sleep, unload"))

    box(ax, 13.4, 6.3, 4.9, 3.6, "Redis / Valkey", (
        "API: worker + model registry",
        "scheduler: durable copy of pools,",
        "  metrics, selection counts (API too)",
        "autoscaler: leader lease, drain marks,",
        "  action log, unloaded slots",
        "collector: reads the worker registry",
        "(every service: read back after restart)"), "store", size=10.5)
    box(ax, 4.6, 0.2, 7.8, 1.5, "worker agent(s)  +  engines", (
        "llmsched worker: /instances/* start, sleep, wake, stop; heartbeats to the API",
        "vLLM / SGLang / simulated engines: /v1/* and /metrics"), "engine")
    box(ax, 0.4, 0.2, 3.6, 1.5, "F5 iControl REST", ("pool membership", "(source: f5)"), "ext")

    # clients → API
    arrow(ax, (2.2, 8.6), (2.0, 7.38), "", HTTP)
    arrow(ax, (6.4, 8.6), (7.5, 7.38), "select", HTTP)
    arrow(ax, (10.6, 8.6), (10.5, 7.38), "HTTP", HTTP)
    # API ↔ NATS ↔ services
    for x in (2.0, 4.9, 7.9):
        arrow(ax, (x, 5.9), (x, 5.32), both=True, color=BUS)
    arrow(ax, (10.5, 5.9), (10.5, 5.32), both=True, color=BUS)
    for x in (2.2, 6.4, 10.6):
        arrow(ax, (x, 4.55), (x, 3.92), both=True, color=BUS)
    # gateway → engines (HTTP, streamed) down the right-hand channel
    ax.plot([12.3, 12.85, 12.85], [6.5, 6.5, 1.0], color=HTTP, lw=1.6)
    arrow(ax, (12.85, 1.0), (12.42, 1.0), color=HTTP)
    ax.text(12.95, 3.9, "gateway → engine: proxied, streamed", fontsize=8.5, color=HTTP,
            rotation=90, va="center", ha="left")
    arrow(ax, (1.6, 2.3), (1.6, 1.72), "iControl REST", HTTP, dx=-0.1, dy=-0.06, ha="right")
    arrow(ax, (3.9, 2.35), (4.8, 1.72), "GET /metrics", HTTP, at=0.0, dx=-0.35, dy=-0.6,
          ha="center")
    arrow(ax, (10.6, 2.3), (10.6, 1.72), "/instances/*", HTTP, dx=0.75, dy=-0.05)
    # Redis
    arrow(ax, (12.4, 7.6), (13.4, 7.6), "", STORE, dashed=True, both=True)
    ax.text(12.45, 7.7, "registries", fontsize=8, color=STORE)
    subjects = [
        ("scheduler.select|simulate|analyze|status|route", "API → one scheduler (request-reply)"),
        ("pool.snapshot.<partition>.<pool>", "collector → every scheduler and API"),
        ("member.metrics.<partition>.<pool>", "collector → every scheduler and API"),
        ("selection", "whoever decided → all the others (in flight +1)"),
        ("request.outcome", "gateway → every scheduler and API (in flight −1)"),
        ("load.<pool>", "scheduler → autoscaler (incl. in flight)"),
        ("autoscaler.demand", "gateway → autoscaler (held requests)"),
        ("autoscaler.action", "autoscaler → anyone (what it did)"),
        ("registry.changed", "API, autoscaler → every service"),
    ]
    ax.text(13.4, 5.7, "NATS subjects", fontsize=10.5, fontweight="bold", color=BUS, va="top")
    for i, (subject, what) in enumerate(subjects):
        y = 5.3 - 0.56 * i
        ax.text(13.4, y, subject, fontsize=8.3, color=BUS, va="top", family="monospace")
        ax.text(13.6, y - 0.24, what, fontsize=8, color=MUTED, va="top")
    fig.savefig(OUT / "architecture.png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


@dataclass
class Seq:
    """A small sequence-diagram builder: lifelines, messages top to bottom, notes."""

    ax: Axes
    names: list[str]
    xs: list[float]
    top: float
    y: float = 0.0
    step: float = 0.52

    def __post_init__(self) -> None:
        self.y = self.top - 0.9

    def x(self, name: str) -> float:
        return self.xs[self.names.index(name)]

    def heads(self, bottom: float, titles: dict[str, str]) -> None:
        for name, x in zip(self.names, self.xs, strict=True):
            self.ax.plot([x, x], [bottom, self.top - 0.35], color="#9aa5b1", lw=1, ls=":",
                         zorder=0.5)
            self.ax.add_patch(FancyBboxPatch((x - 1.05, self.top - 0.35), 2.1, 0.62,
                                             boxstyle="round,pad=0.02", fc=FILL["api"],
                                             ec=INK, lw=1.1))
            self.ax.text(x, self.top - 0.04, titles.get(name, name), ha="center", va="center",
                         fontsize=9.5, fontweight="bold")

    def msg(self, src: str, dst: str, label: str, color: str = INK, *,
            dashed: bool = False, fail: bool = False) -> None:
        y = self.y
        x1, x2 = self.x(src), self.x(dst)
        self.ax.add_patch(FancyArrowPatch((x1, y), (x2, y), arrowstyle="-|>",
                                          mutation_scale=12, color=color, lw=1.3,
                                          linestyle="--" if dashed else "-"))
        if fail:
            self.ax.text(x2 - 0.12 * (1 if x2 > x1 else -1), y, "✕", ha="center",
                         va="center", fontsize=14, color="#c62828", fontweight="bold")
        self.ax.text((x1 + x2) / 2, y + 0.05, label, ha="center", va="bottom", fontsize=8.3,
                     color=color, bbox={"fc": "white", "ec": "none", "alpha": 0.9, "pad": 0.6})
        self.y -= self.step

    def relay(self, src: str, via: str, dst: str, label: str, color: str = INK) -> None:
        """``src`` → ``via`` → ``dst`` on one row (the gateway passing an answer through)."""
        y = self.y
        for a, b in ((src, via), (via, dst)):
            self.ax.add_patch(FancyArrowPatch((self.x(a), y), (self.x(b), y), arrowstyle="-|>",
                                              mutation_scale=12, color=color, lw=1.3,
                                              linestyle="--"))
        left, right = sorted((self.x(src), self.x(dst)))
        self.ax.text((left + right) / 2, y + 0.05, label, ha="center", va="bottom",
                     fontsize=8.3, color=color,
                     bbox={"fc": "white", "ec": "none", "alpha": 0.9, "pad": 0.6})
        self.y -= self.step

    def finish(self, fig: plt.Figure, titles: dict[str, str], name: str) -> None:
        """Draw the lifelines down to the last message, crop, save."""
        self.heads(self.y - 0.1, titles)
        self.ax.set_ylim(self.y - 0.3, self.ax.get_ylim()[1])
        fig.savefig(OUT / name, dpi=DPI, bbox_inches="tight")
        plt.close(fig)

    def note(self, at: str, text: str, *, width: float = 3.6, right: bool = True) -> None:
        lines = text.count("\n") + 1
        h = 0.24 + 0.2 * lines
        x = self.x(at) + (0.1 if right else -width - 0.1)
        y = self.y + 0.18 - h
        self.ax.add_patch(FancyBboxPatch((x, y), width, h, boxstyle="round,pad=0.02",
                                         fc=FILL["note"], ec="#c9b458", lw=0.9))
        self.ax.text(x + 0.1, y + h / 2, text, ha="left", va="center", fontsize=8,
                     color=INK, linespacing=1.25)
        self.y -= h + 0.2

    def band(self, label: str) -> None:
        self.ax.plot([self.xs[0] - 1.1, self.xs[-1] + 1.1], [self.y + 0.25, self.y + 0.25],
                     color="#cbd2d9", lw=0.8)
        self.ax.text(self.xs[0] - 1.05, self.y + 0.28, label, fontsize=8.5, color=MUTED,
                     va="bottom", style="italic")
        self.y -= 0.32


def gateway_request() -> None:
    """One streamed chat request: route, a failed first attempt, retry, relay, outcome."""
    fig, ax = canvas(16, 13.2)
    ax.text(0.3, 13.0, "One OpenAI request through the gateway (first engine fails before its "
            "first byte)", fontsize=14, fontweight="bold", va="top")
    names = ["client", "api", "sched", "a", "b"]
    s = Seq(ax, names, [1.4, 4.6, 8.4, 11.6, 14.6], top=12.2)
    s.msg("client", "api", "POST /v1/chat/completions {model: \"chat\", stream: true}", HTTP)
    s.note("api", "check body (400 naming the field), resolve the alias\n"
           "(404 model_not_found), max_ongoing_requests (429)", width=4.4)
    s.band("attempt 0")
    s.note("api", "route in-process (gateway.decide: local, the default):\n"
           "the scheduling core on this process's view of the pool;\n"
           "awake, available members; threshold filter;\n"
           "least_load: fewest in flight → A  (A +1 here at once)", width=4.6)
    s.msg("api", "sched", "publish selection {A, request_id …-0}  (1 ms batches)", BUS)
    s.note("sched", "every replica and every other API process:\nA +1 in flight", width=4.6)
    s.msg("api", "a", "POST /v1/chat/completions (x-request-id …-0)", HTTP, fail=True)
    s.note("api", "refused / reset / 5xx / no first byte within\n"
           "first_byte_timeout_s: nothing sent to the client yet; A −1 here", width=4.6)
    s.msg("api", "sched", "publish request.outcome {…-0, final: false, status 0|5xx}", BUS)
    s.note("sched", "everyone else: A −1 in flight", width=4.6)
    s.band("attempt 1 (up to gateway.retries, backoff 0.05 s doubling)")
    s.note("api", "route in-process again, exclude [A] → B", width=4.6)
    s.msg("api", "sched", "publish selection {B, request_id …-1}", BUS)
    s.msg("api", "b", "POST /v1/chat/completions (x-request-id …-1)", HTTP)
    s.relay("b", "api", "client", "200 + first chunk relayed: the answer has started, no retry "
            "from here on", HTTP)
    s.relay("b", "api", "client", "SSE chunks relayed as they arrive (the usage chunk is read "
            "on the way)", HTTP)
    s.msg("api", "sched", "publish request.outcome {…-1, final: true, 200, ttft_s, e2e_s, tokens}",
          BUS)
    s.note("sched", "everyone: B −1 in flight; the TTFT predictor learns\n"
           "(or after inflight_ttl_s if lost)", width=4.6)
    s.note("sched", "with gateway.decide: scheduler, each route is instead a NATS\n"
           "request to scheduler.route, answered by one replica", width=4.6)
    s.finish(fig, {"client": "client (SDK)", "api": "API: gateway",
                   "sched": "scheduler replicas,\nother API processes", "a": "engine A",
                   "b": "engine B"},
             "gateway-request.png")


def scale_from_zero() -> None:
    """A request for an alias with nothing awake: held, demand, start, registry, routed."""
    fig, ax = canvas(19, 14.6)
    ax.text(0.3, 14.4, "Scale from zero: a request held while an instance wakes or starts",
            fontsize=14, fontweight="bold", va="top")
    names = ["client", "api", "sched", "coll", "auto", "worker", "engine"]
    s = Seq(ax, names, [1.3, 4.1, 6.9, 9.7, 12.5, 15.2, 17.7], top=13.6)
    s.msg("client", "api", "POST /v1/chat/completions {model: \"zero\"}", HTTP)
    s.note("api", "route in-process: {answer: none, active: 0}", width=4.2)
    s.note("api", "hold: the alias's line (≤ hold_queue_size,\n"
           "else 503 no_capacity); deadline hold_timeout_s", width=4.2)
    s.msg("api", "auto", "publish autoscaler.demand {alias: zero, waiting: 1}   (again every 1 s)",
          BUS)
    s.note("auto", "evaluated at once (urgent): load = waiting / 0\n"
           "capacity = inf > load_high → wake a sleeping\ninstance, else start one",
           width=4.0, right=False)
    s.msg("auto", "worker", "POST /instances/{name}/wake  or  /instances/start", HTTP)
    s.msg("worker", "engine", "wake / start the engine", HTTP)
    s.msg("engine", "worker", "ready", HTTP, dashed=True)
    s.msg("worker", "api", "POST /workers/{id}/heartbeat (instance zero: running), at once", HTTP)
    s.note("api", "writes the worker record to Redis; publishes\n"
           "registry.changed: held requests ask again now", width=4.2)
    s.msg("coll", "api", "pool.snapshot @models.zero [new member]  (registry read every 1 s; "
          "to every scheduler and API)", BUS)
    s.msg("coll", "api", "member.metrics (next scrape round)", BUS)
    s.band("the held request (asks every 0.2 s, or at once on registry.changed)")
    s.note("api", "route in-process: {answer: member, url}", width=4.2)
    s.msg("api", "sched", "publish selection (every scheduler counts it)", BUS)
    s.msg("api", "auto", "autoscaler.demand {waiting: 0}  (it left the line: demand withdrawn)",
          BUS)
    s.msg("api", "engine", "POST /v1/chat/completions", HTTP)
    s.relay("engine", "api", "client", "answer relayed to the client", HTTP)
    s.msg("api", "sched", "request.outcome {final: true, 200, ...}", BUS)
    s.finish(fig, {"client": "client", "api": "API: gateway", "sched": "scheduler",
                   "coll": "collector", "auto": "autoscaler\n(leader)", "worker": "worker",
                   "engine": "engine"}, "scale-from-zero.png")


def main() -> None:
    architecture()
    gateway_request()
    scale_from_zero()
    for name in ("architecture", "gateway-request", "scale-from-zero"):
        print(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
