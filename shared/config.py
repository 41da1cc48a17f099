"""The configuration file (SPEC §1.6): typed structs, loading and validation."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import msgspec

from shared.autoscaling import AutoscalingOverrides
from shared.engines import BUILTIN_ENGINES, EngineMetricsSpec
from shared.errors import BadRequest
from shared.members import MemberAddressError, parse_member_key
from shared.metrics_config import PrometheusConfig
from shared.pd_config import PDRolesConfig, PDSettings, Role
from shared.prefix_config import (
    CacheAwareConfig,
    KvEventsConfig,
    check_cache_aware,
    check_kv_events,
)
from shared.subjects import MODELS_PARTITION

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """The file cannot be used; ``path`` names the offending key (``pools[0].engine_type``)."""

    def __init__(self, path: str, message: str) -> None:
        message = _one_line(message)
        super().__init__(f"config error at {path or '<root>'}: {message}")
        self.path = path
        self.message = message


def _one_line(text: str) -> str:
    """``text`` with its lines joined by ``; `` (a log or exit message is one line)."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _yaml_reason(err: msgspec.DecodeError) -> str:
    # PyYAML puts each position on a line of its own: 'in "<byte string>", line 2, column 13'.
    parts: list[str] = []
    for line in str(err).splitlines():
        line = line.strip()
        where = line.removeprefix('in "<byte string>", ')
        if parts and where != line:
            parts[-1] += f" at {where}"
        elif line:
            parts.append(line)
    return "; ".join(parts)


class GlobalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    interval: float = 60
    """Hot-reload check interval, seconds."""
    api_port: int = 8080
    api_host: str = "0.0.0.0"
    log_level: str | None = None
    """DEBUG/INFO/WARNING/ERROR/CRITICAL; when absent, ``log_debug`` decides."""
    log_debug: bool = False
    """Legacy switch: DEBUG when true and ``log_level`` is absent."""
    prefix: str = "llmsched"
    """NATS subject and Redis key prefix; two deployments on one bus use different ones."""
    select_timeout_ms: float = 500
    """How long the API waits for a scheduler answer before replying 503."""
    worker_lost_after_s: float = 15
    """A worker silent this long (at least 3 heartbeats) is lost; its instances leave routing."""

    @property
    def effective_log_level(self) -> str:
        if self.log_level:
            return self.log_level.upper()
        return "DEBUG" if self.log_debug else "INFO"


class F5Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str
    port: int = 443
    username: str = "admin"
    password_env: str | None = None
    """Name of the environment variable holding the password."""
    scheme: Literal["https", "http"] = "https"
    verify: bool | str = True
    """TLS verification: true, false, or a path to a CA bundle."""
    timeout: float = 10
    """Seconds per iControl REST call."""
    auth: Literal["token", "basic"] = "token"
    """``token`` logs in for an X-F5-Auth-Token (falls back to basic auth when login fails)."""
    login_provider: str = "tmos"

    def password(self) -> str:
        if not self.password_env:
            return ""
        return os.environ.get(self.password_env, "")


DEFAULT_PENDING_MSGS_LIMIT = 512 * 1024
"""nats-py's own default per subscription (``nats.aio.subscription``)."""


class SchedulerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pool_fetch_interval: float = 10
    """Seconds between F5 member fetches."""
    pool_fetch_backoff_max: float | None = None
    """Longest wait, seconds, between F5 fetches while the F5 fails (default: twice
    ``pool_fetch_interval``), so membership is current soon after the F5 answers again."""
    metrics_fetch_interval: float | None = None
    """MILLISECONDS between metric scrapes (unset: ``fast_scrape_interval`` for pools of up to
    ``fast_scrape_max_members`` members, 1000 for larger ones)."""
    fast_scrape_interval: float = 100
    """MILLISECONDS between scrapes of a small pool when ``metrics_fetch_interval`` is unset."""
    fast_scrape_max_members: int = 16
    """Pools this small are scraped at ``fast_scrape_interval`` by default (10 Hz)."""
    stale_after_intervals: float = 3
    """Metrics older than this many scrape intervals are stale and score 0."""
    state_ttl: float = 3600
    """Seconds Redis keeps the last snapshot and metrics of a pool."""
    pending_msgs_limit: int = DEFAULT_PENDING_MSGS_LIMIT
    """Messages a replica's event subscription (snapshots, metrics, selections, outcomes, KV
    updates) holds unread before its NATS client drops the next ones; read at start."""

    @property
    def effective_pool_fetch_backoff_max(self) -> float:
        if self.pool_fetch_backoff_max is not None:
            return self.pool_fetch_backoff_max
        return 2 * self.pool_fetch_interval


MIN_DEFAULT_LEASE_S = 0.3
"""Floor of the default collector lease: shorter ones hand pools over on event-loop pauses."""


class CollectorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How several collector processes split the pools (docs/collector.md)."""

    lease_ms: float | None = None
    """MILLISECONDS a collector's heartbeat and pool leases live without renewal: a killed
    collector's pools move to a survivor within about 1.2 × this (default: twice the
    shortest scrape interval, at least 300)."""


class PredictorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The greybox TTFT predictor (an online ridge regression of log TTFT per member)."""

    min_samples: int = 20
    """Observations a member needs before its predictions are trusted."""
    forgetting: float = 0.995
    """Weight the past keeps at each new observation."""
    ridge: float = 1.0
    max_residual: float = 0.8
    """Trusted only while the recent RMS error of log(TTFT) stays below this."""
    explore: float = 0.05
    """Members predicted within this fraction of the best are picked at random among."""


class CircuitConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A member whose requests fail leaves routing for a while."""

    failures: int = 5
    """Consecutive failed requests (no answer, or 5xx) that open the circuit."""
    successes: int = 2
    """Successful trial requests that close it again."""
    open_s: float = 30.0
    """How long an open circuit keeps the member out before a trial request."""


class GreyboxConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The three layers of the greybox mode (SPEC §3): guard and admission, predictor, fallback."""

    max_inflight: int | None = None
    """Requests in flight per member before it is guarded (default: the engine's batch size,
    learned from its running count when it queues, or the instance's registered capacity,
    else ``default_max_inflight``)."""
    default_max_inflight: int = 8
    inflight_limit_factor: float = 1.0
    """Multiplies the learned/registered batch size (1.0: no queue at the engine)."""
    max_waiting: float | None = None
    """Engine waiting queue past which a member is guarded (default: none)."""
    max_kv_usage: float = 0.98
    """KV usage past which a member is guarded until it falls below ``resume_kv_usage``."""
    resume_kv_usage: float = 0.90
    stale_policy: Literal["inflight_only", "exclude"] = "inflight_only"
    """Members with stale metrics: routed on the router's own counts (default), or out."""
    admission: bool = True
    """Everything guarded: the gateway holds the request; select answers ``busy``."""
    select_inflight_ttl_s: float = 30.0
    """A select counts as in flight this long unless the iRule reports its outcome first."""
    low_zone_inflight: int = -1
    """Some candidate has at most this many in flight: low load, least load decides
    (-1: the predictor decides at every load once trusted; 0: whenever a member is idle)."""
    ttft_slo_ms: float | None = None
    """Target TTFT: held requests that can still meet it go first (default: FIFO)."""
    max_queue_wait_s: float = 1.0
    """With ``ttft_slo_ms``: a request held this long goes first whatever its chance."""
    predictor: PredictorConfig = msgspec.field(default_factory=lambda: PredictorConfig())
    circuit: CircuitConfig = msgspec.field(default_factory=lambda: CircuitConfig())


class WeightedConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``weighted`` mode (seed 004): Σ weight × score of load, KV cache and latency."""

    load_weight: float = 0.5
    kv_cache_weight: float = 0.3
    latency_weight: float = 0.2


class ModeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = "s1"
    w_a: float = 0.5
    """Waiting-queue weight."""
    w_b: float = 0.5
    """KV-cache-usage weight."""
    w_g: float = 0.0
    """Reserved."""
    type: str = "s1"
    """Which scoring profile this mode uses: ``s1``, ``least_load``, ``greybox``,
    ``round_robin`` or ``weighted``."""
    greybox: GreyboxConfig = msgspec.field(default_factory=lambda: GreyboxConfig())
    """Settings of a ``greybox`` mode."""
    cache_aware: CacheAwareConfig = msgspec.field(default_factory=lambda: CacheAwareConfig())
    """Settings of a ``cache_aware`` mode (its guard and predictor: ``greybox``)."""
    weighted: WeightedConfig = msgspec.field(default_factory=lambda: WeightedConfig())
    """Weights of a ``weighted`` mode."""


MODE_TYPES = ("s1", "least_load", "greybox", "round_robin", "weighted", "cache_aware")
LEAST_LOAD = ModeConfig(name="least_load", type="least_load")
"""The built-in mode of registered aliases: fewest in flight, then shortest queue."""


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    schema: Literal["http", "https"] = "http"
    port: int | None = None
    """null = the member's own port."""
    path: str = "/metrics"
    timeout: float = 3
    APIkey: str | None = None
    """Sent as ``Authorization: Bearer``."""
    apikey_env: str | None = None
    """Environment variable holding the bearer token (preferred over ``APIkey``)."""
    metric_user: str | None = None
    metric_pwd_env: str | None = None
    verify: bool | str = True

    def bearer(self) -> str | None:
        if self.apikey_env:
            return os.environ.get(self.apikey_env) or None
        return self.APIkey

    def basic_password(self) -> str:
        if not self.metric_pwd_env:
            return ""
        return os.environ.get(self.metric_pwd_env, "")


class FallbackConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pool_fallback: bool = False
    member_running_req_threshold: float | None = None
    member_waiting_queue_threshold: float | None = None


class PoolConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    engine_type: str
    partition: str = "Common"
    metrics: MetricsConfig = MetricsConfig()
    fallback: FallbackConfig = FallbackConfig()
    source: Literal["f5", "static", "workers"] | None = None
    """f5 (default when an f5 section exists), static, or workers (registered instances)."""
    model: str | None = None
    """The model alias this pool serves through the gateway (``source: workers``: the alias
    whose instances form the pool; default: the pool name)."""
    served_model_name: str | None = None
    """The model name the pool's engines serve, when it differs from ``model``."""
    members: list[str] = []
    """``source: static`` only."""
    mode: str | None = None
    """Which entry of ``modes`` scores this pool (default: the first)."""
    engine_metrics: EngineMetricsSpec | None = None
    """Override of the engine's metric names for this pool."""
    kv_events: KvEventsConfig | None = None
    """Where the members' engines publish KV-cache events (precise cache-aware routing)."""
    tokenizer: str | None = None
    """The engines' tokenizer: a tokenizer.json path, or ``enginesim`` (the simulator's)."""
    roles: PDRolesConfig | None = None
    """Prefill/decode members: the pool serves ``model`` disaggregated (docs/pd.md)."""
    pd: PDSettings = PDSettings()
    """Strategies, health checks, retries and drain of a pool with ``roles``."""
    role: Role | None = None
    """Set on the role pools a pool with ``roles`` becomes (not written by hand)."""
    pd_pool: str | None = None
    """The pool with ``roles`` a role pool belongs to (not written by hand)."""

    @property
    def ident(self) -> tuple[str, str]:
        return (self.name, self.partition)


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The OpenAI-compatible gateway on the API service."""

    max_ongoing_requests: int | None = None
    """Concurrent requests per API process (default: env SERVE_MAX_ONGOING_REQUESTS or 100)."""
    retries: int = 2
    """Other instances tried when an engine fails before its first byte."""
    first_byte_timeout_s: float = 120.0
    """An engine that sends no first byte within this is abandoned for another."""
    hold_queue_size: int = 100
    """Requests held per alias and API process while an instance wakes or starts."""
    hold_timeout_s: float = 120.0
    """How long a held request waits before 503 with Retry-After."""
    hold_next_try_ms: float = 3.0
    """After a held request got an instance, the next one in its line asks this much later:
    the selection reaches every scheduler replica first, so the next ask is not answered
    from a view that still shows the slot free (0: at once)."""
    inflight_ttl_s: float = 900.0
    """A routed request whose outcome is never reported stops counting after this."""
    decide: Literal["scheduler", "local"] = "local"
    """Where a gateway request's member is chosen: ``local`` (the scheduling core in the API
    process, its view kept from the bus like a scheduler replica's; no round trip per
    request) or ``scheduler`` (a NATS ``route`` call to the scheduler queue group). Takes
    effect at the API's start."""
    api_keys_env: str | None = None
    """Environment variable with comma-separated keys required on /v1/* (unset: open)."""
    models_mode: str | None = None
    """The ``modes`` entry that routes registered aliases (default: built-in least_load)."""
    models_metrics: MetricsConfig = msgspec.field(default_factory=lambda: MetricsConfig())
    """How instances of registered aliases are scraped."""
    models_fallback: FallbackConfig = msgspec.field(default_factory=lambda: FallbackConfig())
    """Member thresholds for registered aliases' pools."""

    def max_ongoing(self) -> int:
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        raw = os.environ.get("SERVE_MAX_ONGOING_REQUESTS", "")
        return int(raw) if raw.isdigit() and int(raw) > 0 else 100

    def api_keys(self) -> frozenset[str]:
        if not self.api_keys_env:
            return frozenset()
        raw = os.environ.get(self.api_keys_env, "")
        return frozenset(k.strip() for k in raw.split(",") if k.strip())


class AutoscalingConfig(AutoscalingOverrides, frozen=True, kw_only=True,
                        forbid_unknown_fields=True):
    """Autoscaler settings for every alias; ``models.<alias>`` overrides per alias."""

    models: dict[str, AutoscalingOverrides] = {}


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    global_: GlobalConfig = msgspec.field(default_factory=GlobalConfig, name="global")
    f5: F5Config | None = None
    scheduler: SchedulerConfig = SchedulerConfig()
    collector: CollectorConfig = CollectorConfig()
    modes: list[ModeConfig] = msgspec.field(default_factory=lambda: [ModeConfig()])
    pools: list[PoolConfig] = []
    engines: dict[str, EngineMetricsSpec] = {}
    """Extra engine types (or overrides of ``vllm``/``sglang``) as metric-name mappings."""
    gateway: GatewayConfig = msgspec.field(default_factory=lambda: GatewayConfig())
    autoscaling: AutoscalingConfig = msgspec.field(default_factory=lambda: AutoscalingConfig())
    metrics: PrometheusConfig = msgspec.field(default_factory=lambda: PrometheusConfig())
    """The services' own Prometheus metrics (docs/metrics.md)."""

    def implicit_pool(self, alias: str, engine: str) -> PoolConfig:
        """The pool of a registered alias: its instances on active workers."""
        g = self.gateway
        return PoolConfig(name=alias, partition=MODELS_PARTITION, engine_type=engine,
                          source="workers", model=alias, mode=g.models_mode,
                          metrics=g.models_metrics, fallback=g.models_fallback)

    def configured_alias(self, alias: str) -> PoolConfig | None:
        """A configured pool that serves ``alias`` (it wins over a registered alias)."""
        for pool in self.pools:
            named = pool.model or (pool.name if self.pool_source(pool) == "workers" else None)
            if named == alias:
                return pool
        return None

    def scrape_interval_s(self, members: int) -> float:
        """Seconds between scrapes of a pool of ``members`` members."""
        s = self.scheduler
        if s.metrics_fetch_interval is not None:
            return s.metrics_fetch_interval / 1000.0
        if members <= s.fast_scrape_max_members:
            return s.fast_scrape_interval / 1000.0
        return 1.0

    def collector_lease_s(self) -> float:
        """Seconds a collector's heartbeat and pool leases live (``collector.lease_ms``)."""
        if self.collector.lease_ms is not None:
            return self.collector.lease_ms / 1000.0
        s = self.scheduler
        if s.metrics_fetch_interval is not None:
            shortest = s.metrics_fetch_interval / 1000.0
        elif s.fast_scrape_max_members > 0:
            shortest = min(1.0, s.fast_scrape_interval / 1000.0)
        else:
            shortest = 1.0
        return max(MIN_DEFAULT_LEASE_S, 2 * shortest)

    def stale_after_s(self, members: int) -> float:
        """Metrics of a pool of ``members`` older than this are stale."""
        return self.scrape_interval_s(members) * self.scheduler.stale_after_intervals

    def pool_source(self, pool: PoolConfig) -> str:
        if pool.role is not None:
            return "pd"  # file, admin API or workers, plus health and drain (shared/pd_source.py)
        if pool.source:
            return pool.source
        return "f5" if self.f5 is not None and pool.roles is None else "static"

    def engine_spec(self, pool: PoolConfig) -> EngineMetricsSpec:
        if pool.engine_metrics is not None:
            return pool.engine_metrics
        spec = self.engines.get(pool.engine_type) or BUILTIN_ENGINES.get(pool.engine_type)
        if spec is None:
            raise ConfigError("", f"unknown engine_type {pool.engine_type!r}")
        return spec

    def mode_for(self, pool: PoolConfig) -> ModeConfig:
        if pool.mode is None:
            if pool.partition == MODELS_PARTITION:
                return LEAST_LOAD
            return self.modes[0] if self.modes else ModeConfig()
        for mode in self.modes:
            if mode.name == pool.mode:
                return mode
        raise ConfigError("", f"unknown mode {pool.mode!r}")


class LoadedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A validated config plus the identity of the file text it came from."""

    config: Config
    version: str
    """First 12 hex digits of the SHA-256 of the file text; equal across services."""
    path: str


def _msgspec_path(err: msgspec.ValidationError) -> tuple[str, str]:
    text = str(err)
    marker = " - at `$"
    if marker in text:
        message, _, rest = text.partition(marker)
        path = rest.rstrip("`").lstrip(".")
        return path, message
    return "", text


def parse_config(text: str, *, source: str = "<config>") -> Config:
    """Decode and validate YAML text; raise ConfigError naming the key path."""
    try:
        config = msgspec.yaml.decode(text.encode() if text else b"{}", type=Config)
    except msgspec.ValidationError as err:
        path, message = _msgspec_path(err)
        raise ConfigError(path, message) from None
    except msgspec.DecodeError as err:
        raise ConfigError("", f"{source} is not valid YAML: {_yaml_reason(err)}") from None
    validate(config)
    from shared.pd_expand import expand_pd_pools  # it builds on this module's structs

    return expand_pd_pools(config)


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read and validate a config file."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise ConfigError("", f"cannot read {file}: {err.strerror or err}") from None
    text = raw.decode("utf-8", errors="replace")
    config = parse_config(text, source=str(file))
    return LoadedConfig(config=config, version=config_version(raw), path=str(file))


def config_version(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:12]


def _check_positive(path: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(path, f"must be > 0, got {value}")


def validate(config: Config) -> None:
    """Checks msgspec's types cannot express; the first problem found is raised."""
    g = config.global_
    _check_positive("global.interval", g.interval)
    _check_positive("global.select_timeout_ms", g.select_timeout_ms)
    _check_positive("global.worker_lost_after_s", g.worker_lost_after_s)
    if not 0 < g.api_port < 65536:
        raise ConfigError("global.api_port", f"must be a TCP port 1..65535, got {g.api_port}")
    if g.log_level is not None and g.log_level.upper() not in LOG_LEVELS:
        raise ConfigError("global.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    if not g.prefix or not all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in g.prefix):
        raise ConfigError("global.prefix", "must be letters, digits, '-' or '_' only")
    s = config.scheduler
    _check_positive("scheduler.pool_fetch_interval", s.pool_fetch_interval)
    if s.pool_fetch_backoff_max is not None:
        _check_positive("scheduler.pool_fetch_backoff_max", s.pool_fetch_backoff_max)
    if s.metrics_fetch_interval is not None:
        _check_positive("scheduler.metrics_fetch_interval", s.metrics_fetch_interval)
    _check_positive("scheduler.fast_scrape_interval", s.fast_scrape_interval)
    if s.fast_scrape_max_members < 0:
        raise ConfigError("scheduler.fast_scrape_max_members", "must be >= 0")
    _check_positive("scheduler.stale_after_intervals", s.stale_after_intervals)
    _check_positive("scheduler.pending_msgs_limit", s.pending_msgs_limit)
    if config.collector.lease_ms is not None and config.collector.lease_ms < 100:
        raise ConfigError("collector.lease_ms",
                          f"must be >= 100 (milliseconds), got {config.collector.lease_ms}")
    if config.f5 is not None and not 0 < config.f5.port < 65536:
        raise ConfigError("f5.port", f"must be a TCP port 1..65535, got {config.f5.port}")
    mode_names: set[str] = set()
    for i, mode in enumerate(config.modes):
        if mode.name in mode_names:
            raise ConfigError(f"modes[{i}].name", f"duplicate mode {mode.name!r}")
        mode_names.add(mode.name)
        if mode.type not in MODE_TYPES:
            raise ConfigError(f"modes[{i}].type", f"unknown scoring profile {mode.type!r} "
                              f"(known: {', '.join(MODE_TYPES)})")
        for field in ("w_a", "w_b", "w_g"):
            if getattr(mode, field) < 0:
                raise ConfigError(f"modes[{i}].{field}", "must be >= 0")
        if bad := check_cache_aware(f"modes[{i}].cache_aware", mode.cache_aware):
            raise ConfigError(*bad)
    seen: set[tuple[str, str]] = set()
    engines = set(BUILTIN_ENGINES) | set(config.engines)
    from shared.pd_expand import validate_pd_pool  # it builds on this module's structs

    for i, pool in enumerate(config.pools):
        at = f"pools[{i}]"
        if not pool.name:
            raise ConfigError(f"{at}.name", "must not be empty")
        if pool.ident in seen:
            raise ConfigError(f"{at}.name", f"duplicate pool {pool.name}:{pool.partition}")
        seen.add(pool.ident)
        if pool.engine_metrics is None and pool.engine_type not in engines:
            raise ConfigError(
                f"{at}.engine_type",
                f"unknown engine {pool.engine_type!r} (known: {', '.join(sorted(engines))};"
                " add one under `engines:` or give the pool `engine_metrics:`)",
            )
        if pool.mode is not None and pool.mode not in mode_names:
            raise ConfigError(f"{at}.mode", f"no mode named {pool.mode!r} in modes")
        validate_pd_pool(at, pool, mode_names)
        source = config.pool_source(pool)
        if source == "f5" and config.f5 is None:
            raise ConfigError(f"{at}.source", "source f5 needs an `f5:` section with a host")
        if pool.source == "static" and not pool.members and pool.roles is None:
            raise ConfigError(f"{at}.members", "a static pool needs at least one member")
        if source == "f5" and pool.members:
            raise ConfigError(f"{at}.members", "members are only allowed with source: static")
        for j, member in enumerate(pool.members):
            try:
                parse_member_key(member)
            except MemberAddressError as err:
                raise ConfigError(f"{at}.members[{j}]", str(err)) from None
        m = pool.metrics
        _check_positive(f"{at}.metrics.timeout", m.timeout)
        if m.port is not None and not 0 < m.port < 65536:
            raise ConfigError(f"{at}.metrics.port", f"must be a TCP port 1..65535, got {m.port}")
        if not m.path.startswith("/"):
            raise ConfigError(f"{at}.metrics.path", "must start with '/'")
        fb = pool.fallback
        for field in ("member_running_req_threshold", "member_waiting_queue_threshold"):
            value = getattr(fb, field)
            if value is not None and value < 0:
                raise ConfigError(f"{at}.fallback.{field}", "must be >= 0")
        if pool.partition == MODELS_PARTITION:
            raise ConfigError(f"{at}.partition", f"partition {MODELS_PARTITION!r} is reserved "
                              "for registered model aliases")
        if pool.kv_events is not None and (bad := check_kv_events(f"{at}.kv_events",
                                                                  pool.kv_events)):
            raise ConfigError(*bad)
    _validate_gateway(config, mode_names)
    _validate_autoscaling(config.autoscaling)


def _validate_gateway(config: Config, mode_names: set[str]) -> None:
    g = config.gateway
    if g.max_ongoing_requests is not None and g.max_ongoing_requests < 1:
        raise ConfigError("gateway.max_ongoing_requests", "must be >= 1")
    if not 0 <= g.retries <= 10:
        raise ConfigError("gateway.retries", f"must be 0..10, got {g.retries}")
    if g.hold_queue_size < 0:
        raise ConfigError("gateway.hold_queue_size", "must be >= 0")
    if not 0 <= g.hold_next_try_ms <= 1000:
        raise ConfigError("gateway.hold_next_try_ms", f"must be 0..1000, got {g.hold_next_try_ms}")
    for name in ("first_byte_timeout_s", "hold_timeout_s", "inflight_ttl_s"):
        _check_positive(f"gateway.{name}", getattr(g, name))
    if g.models_mode is not None and g.models_mode not in mode_names:
        raise ConfigError("gateway.models_mode", f"no mode named {g.models_mode!r} in modes")
    if not g.models_metrics.path.startswith("/"):
        raise ConfigError("gateway.models_metrics.path", "must start with '/'")


def _validate_autoscaling(a: AutoscalingConfig) -> None:
    for at, overrides in [("autoscaling", a), *((f"autoscaling.models.{alias}", o)
                                                for alias, o in a.models.items())]:
        try:
            overrides.check(at)
        except BadRequest as err:
            raise ConfigError(err.field or at, err.message) from None
