"""Fit the timing model to probe data (stage 1) and to open-loop levels (stage 2).

Stage 1 is linear in the step costs: TTFT at concurrency 1 is ``frontend + base +
(prefill + attn)·L + prefill_kctx·L(L-1)/2000`` and a decode step with ``b`` sequences
over ``ctx`` tokens of context takes ``base + decode·b + attn·ctx``. Both are fitted at once
by ``scipy.optimize.least_squares`` on relative residuals with a soft-L1 loss (a few requests
stalled by an unrelated process must not drag the fit) and bounds at zero. The slow noise is
an Ornstein-Uhlenbeck process fitted to the autocovariance of the saturated throughput.

Stage 2 runs the simulator in virtual time on the very traces the engine was measured with
and adjusts what closed-loop probes cannot see: a common scale of the step costs, the
front-end floor, the queue overhead past saturation and the size of the slow noise. It is
``least_squares`` again (trust-region reflective, finite differences) on residuals divided
by their acceptance tolerances, with weak priors pulling towards the stage-1 values, and
common random numbers (fixed seeds) so the objective is a deterministic function.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares

from services.enginesim.calibrate.client import Arrival
from services.enginesim.calibrate.closed import closed_loop_throughput
from services.enginesim.calibrate.measure import LevelMetrics, from_sim, trace_of
from services.enginesim.calibrate.probes import ItlObs, Saturation, TtftObs
from services.enginesim.calibrate.stalls import StallFit, fit_stalls, steady_windows
from services.enginesim.calibrate.workload import Workload
from services.enginesim.config import EngineConfig
from services.enginesim.timing import Timing
from services.enginesim.virtual import simulate

Vector = NDArray[np.float64]
STEP_FIELDS = ("step_base_ms", "prefill_ms_per_token", "prefill_ms_per_token_kctx",
               "decode_ms_per_seq", "attn_ms_per_ctx_token")


@dataclass(frozen=True)
class StepFit:
    """Stage 1's result: costs in ms, and the median relative error of the fit."""

    frontend_ms: float
    step_base_ms: float
    prefill_ms_per_token: float
    prefill_ms_per_token_kctx: float
    decode_ms_per_seq: float
    attn_ms_per_ctx_token: float
    ttft_error: float
    itl_error: float


QUADRATIC_FROM = 1024
"""Shortest longest-prompt that lets the fit tell attention's quadratic prefill cost from the
linear one; below it that term is fixed at 0 (probe noise would pass for curvature)."""


def fit_step_costs(ttft: Sequence[TtftObs], itl: Sequence[ItlObs]) -> StepFit:
    """Least-squares fit of the linear step-cost model to the probe observations."""
    if len(ttft) < 3 or len(itl) < 3:
        raise ValueError(f"too few probe observations to fit ({len(ttft)} TTFT, {len(itl)} "
                         "step times): is the engine answering?")
    rows: list[list[float]] = []
    obs: list[float] = []
    for o in ttft:
        length = float(o.prompt)
        rows.append([1.0, 1.0, length, length * (length - 1) / 2000, 0.0, length])
        obs.append(o.ttft * 1000)
    n_ttft = len(rows)
    for i in itl:
        rows.append([0.0, 1.0, 0.0, 0.0, float(i.batch), i.ctx])
        obs.append(i.itl * 1000)
    design = np.array(rows, dtype=np.float64)
    target = np.array(obs, dtype=np.float64)

    def residuals(x: Vector) -> Vector:
        return np.asarray((design @ x - target) / target, dtype=np.float64)

    min_itl = float(min(i.itl for i in itl)) * 1000
    min_ttft = float(min(o.ttft for o in ttft)) * 1000
    quadratic = max(o.prompt for o in ttft) >= QUADRATIC_FROM
    x0 = np.array([max(0.1, min_ttft - min_itl), max(0.01, 0.8 * min_itl), 1e-3,
                   1e-4 if quadratic else 0.0, 0.05 * min_itl, 1e-5])
    upper = np.full(6, np.inf)
    if not quadratic:
        upper[3] = 1e-12
    fit = least_squares(residuals, x0, bounds=(np.zeros(6), upper), loss="soft_l1",
                        f_scale=0.05, x_scale="jac", max_nfev=2000)
    rel = np.abs(residuals(fit.x))
    f, b, p, q, d, a = (float(v) for v in fit.x)
    return StepFit(frontend_ms=f, step_base_ms=b, prefill_ms_per_token=p,
                   prefill_ms_per_token_kctx=q, decode_ms_per_seq=d, attn_ms_per_ctx_token=a,
                   ttft_error=float(np.median(rel[:n_ttft])),
                   itl_error=float(np.median(rel[n_ttft:])))


@dataclass(frozen=True)
class NoiseFit:
    """Per-step jitter, the slow multiplier's size and time constant, and the stalls."""

    jitter: float
    drift_sd: float
    drift_tau_s: float
    stall_rate_per_s: float = 0.0
    stall_mean_s: float = 0.0


def fit_noise(sat: Saturation, relative_gaps: Sequence[float],
              default_tau_s: float = 5.0, *, stalls: bool = False) -> NoiseFit:
    """Jitter from the spread of single-stream gaps; drift from the throughput windows'
    swings; with ``stalls``, the stalls from the runs of near-empty windows (``stalls.py``),
    which the drift's fit then leaves out."""
    jitter = 0.0
    if len(relative_gaps) >= 10:
        med = statistics.median(relative_gaps)
        mad = statistics.median(abs(g - med) for g in relative_gaps)
        jitter = min(0.5, 1.4826 * mad)
    found = fit_stalls(sat.windows, sat.window_s) if stalls else StallFit(0.0, 0.0, 0)
    windows = [w for w in (steady_windows(sat.windows) if stalls else sat.windows) if w > 0]
    if len(windows) < 12:
        return NoiseFit(jitter, 0.0, default_tau_s, found.rate_per_s, found.mean_s)
    y = np.log(np.array(windows, dtype=np.float64))
    y -= y.mean()
    n = len(y)
    lags = np.arange(1, min(12, n // 3) + 1)
    cov = np.array([float(np.mean(y[k:] * y[:-k])) for k in lags])
    dt = sat.window_s

    def residuals(x: Vector) -> Vector:
        var, tau = x
        return np.asarray(var * np.exp(-lags * dt / tau) - cov, dtype=np.float64)

    x0 = np.array([max(1e-4, float(cov[0])), default_tau_s])
    fit = least_squares(residuals, x0, bounds=([0.0, dt / 2], [1.0, 120.0]))
    var, tau = (float(v) for v in fit.x)
    return NoiseFit(jitter, math.sqrt(max(0.0, var)), tau, found.rate_per_s, found.mean_s)


def timing_from(step: StepFit, noise: NoiseFit, base: Timing | None = None) -> Timing:
    """A Timing from the stage-1 results."""
    return dataclasses.replace(
        base or Timing(), frontend_ms=step.frontend_ms, step_base_ms=step.step_base_ms,
        prefill_ms_per_token=step.prefill_ms_per_token,
        prefill_ms_per_token_kctx=step.prefill_ms_per_token_kctx,
        decode_ms_per_seq=step.decode_ms_per_seq, attn_ms_per_ctx_token=step.attn_ms_per_ctx_token,
        jitter=noise.jitter, drift_sd=noise.drift_sd, drift_tau_s=noise.drift_tau_s,
        stall_rate_per_s=noise.stall_rate_per_s, stall_mean_s=noise.stall_mean_s,
        queue_ms_per_waiting=0.0)


@dataclass(frozen=True)
class Level:
    """One measured open-loop level: its trace and what the engine did with it."""

    rate: float
    arrivals: tuple[Arrival, ...]
    duration: float
    measured: LevelMetrics
    drain_s: float | None = None


def _first(request: object, view: object) -> int:
    return 0


def simulate_level(config: EngineConfig, level: Level, replicates: int = 3,
                   scrape_interval: float = 0.25) -> LevelMetrics:
    """The level's trace in virtual time, averaged over ``replicates`` seeds."""
    runs = []
    trace = trace_of(level.arrivals)
    for r in range(replicates):
        cfg = dataclasses.replace(config, seed=config.seed + 7919 * r)
        result = simulate(trace, [cfg], _first, scrape_interval=scrape_interval)
        runs.append(from_sim(level.rate, result, level.duration, drain_s=level.drain_s))
    return average(runs)


def average(runs: Sequence[LevelMetrics]) -> LevelMetrics:
    """Replicates combined: percentiles by geometric mean, the rest by arithmetic mean."""
    if len(runs) == 1:
        return runs[0]
    values: dict[str, float] = {}
    for f in dataclasses.fields(LevelMetrics):
        xs = [float(getattr(r, f.name)) for r in runs]
        if f.name.startswith(("ttft_", "e2e_")) and all(x > 0 for x in xs):
            values[f.name] = math.exp(sum(math.log(x) for x in xs) / len(xs))
        else:
            values[f.name] = sum(xs) / len(xs)
    values["requests"] = runs[0].requests
    values["errors"] = runs[0].errors
    return LevelMetrics(**values)  # type: ignore[arg-type]


def level_residuals(sim: LevelMetrics, real: LevelMetrics) -> list[float]:
    """Misfit of one level in units of the acceptance tolerance (1.0 = at the limit)."""
    tol = math.log(1.33)
    out = []
    for key in ("ttft_p50", "ttft_p90"):
        s, r = getattr(sim, key), getattr(real, key)
        out.append(math.log(s / r) / tol if s > 0 and r > 0 else 0.0)
    if math.isfinite(sim.mean_waiting) and math.isfinite(real.mean_waiting):
        out.append(math.log((sim.mean_waiting + 1) / (real.mean_waiting + 1)) / math.log(1.3))
    if sim.throughput > 0 and real.throughput > 0:
        out.append(math.log(sim.throughput / real.throughput) / 0.1)
    return out


@dataclass(frozen=True)
class Capacity:
    """The saturation probe, to be reproduced by a closed loop in virtual time."""

    workload: Workload
    concurrency: int
    throughput: float
    seconds: float = 60.0
    replicates: int = 2


def capacity_residual(config: EngineConfig, capacity: Capacity) -> float:
    """log(simulated / measured) saturated throughput, in units of 3 %."""
    got = statistics.fmean(
        closed_loop_throughput(config, capacity.workload, capacity.concurrency,
                               capacity.seconds, seed=config.seed + 31 * r)
        for r in range(capacity.replicates))
    return math.log(got / capacity.throughput) / 0.03 if got > 0 else 0.0


def scaled(timing: Timing, step_scale: float, frontend_scale: float, queue_ms: float,
           drift_sd: float, stall_scale: float = 1.0) -> Timing:
    """``timing`` with its step costs, front-end floor and stall rate scaled, queue and
    drift set."""
    changes: dict[str, float] = {k: getattr(timing, k) * step_scale for k in STEP_FIELDS}
    return dataclasses.replace(timing, frontend_ms=timing.frontend_ms * frontend_scale,
                               queue_ms_per_waiting=queue_ms, drift_sd=drift_sd,
                               stall_rate_per_s=timing.stall_rate_per_s * stall_scale,
                               **changes)


@dataclass(frozen=True)
class Refined:
    """Stage 2's result."""

    timing: Timing
    simulated: list[LevelMetrics]
    step_scale: float
    frontend_scale: float
    evaluations: int
    stall_scale: float = 1.0


def refine(config: EngineConfig, levels: Sequence[Level], capacity: Capacity | None, *,
           replicates: int = 3, max_evaluations: int = 60,
           say: Callable[[str], None] = print) -> Refined:
    """Stage 2: match the simulator in virtual time to the measured levels and saturation.

    When the saturation probe saw stalls, their rate is a fifth parameter: one 30 s closed
    loop holds a stall or two at most, the open-loop levels hold more."""
    base = config.timing
    queue_unit = max(1e-6, base.step_base_ms / 100)
    drift_unit = 0.1
    drift0 = min(5.0, base.drift_sd / drift_unit)
    stalls = base.stall_rate_per_s > 0 and base.stall_mean_s > 0
    evaluations = 0

    def timing_of(x: Vector) -> Timing:
        return scaled(base, math.exp(x[0]), math.exp(x[1]), float(x[2]) * queue_unit,
                      float(x[3]) * drift_unit, math.exp(x[4]) if stalls else 1.0)

    def residuals(x: Vector) -> Vector:
        nonlocal evaluations
        evaluations += 1
        cfg = dataclasses.replace(config, timing=timing_of(x))
        out: list[float] = []
        for level in levels:
            out += level_residuals(simulate_level(cfg, level, replicates), level.measured)
        if capacity is not None:
            out.append(capacity_residual(cfg, capacity))
        # Weak priors: stay near the closed-loop figures unless the data say otherwise.
        out += [x[0] / 0.3, x[1] / 0.5, x[2] / 10.0, (x[3] - drift0) / 3.0]
        if stalls:
            out.append(x[4] / 1.5)
        return np.array(out, dtype=np.float64)

    # (start, lower, upper) of log step scale, log front-end scale, queue, drift[, log stall scale]
    params = [(0.0, math.log(0.5), math.log(2.0)), (0.0, math.log(0.2), math.log(5.0)),
              (0.01, 0.0, 50.0), (max(0.01, drift0), 0.0, 6.0)]
    if stalls:
        params.append((0.0, math.log(0.2), math.log(20.0)))
    x0, lower, upper = (np.array(column, dtype=np.float64) for column in zip(*params, strict=True))
    start_cost = float(np.sum(residuals(x0) ** 2))
    # Soft-L1: a level near saturation is one draw of a very noisy queue; it must not
    # outweigh the rest. Common random numbers keep the objective deterministic.
    fit = least_squares(residuals, x0, bounds=(lower, upper),
                        diff_step=np.full(len(x0), 0.15), loss="soft_l1",
                        max_nfev=max_evaluations, method="trf")
    timing = timing_of(fit.x)
    final_cost = float(np.sum(fit.fun ** 2))
    say(f"  open-loop fit: squared misfit {start_cost:.1f} -> {final_cost:.1f} after "
        f"{evaluations} simulations of {len(levels)} level(s)")
    cfg = dataclasses.replace(config, timing=timing)
    simulated = [simulate_level(cfg, level, replicates) for level in levels]
    return Refined(timing, simulated, math.exp(float(fit.x[0])), math.exp(float(fit.x[1])),
                   evaluations, math.exp(float(fit.x[4])) if stalls else 1.0)
