"""PD pools at load time: checks naming the key, then each pool split into its two role pools."""

from __future__ import annotations

import msgspec

from shared.config import Config, ConfigError, ModeConfig, PoolConfig, WeightedConfig
from shared.members import MemberAddressError, parse_member_key
from shared.pd_config import ROLE_SEPARATOR, ROLES, STRATEGIES, entry_address, entry_id, role_pool


def validate_pd_pool(at: str, pool: PoolConfig, mode_names: set[str]) -> None:
    """Checks of one pool's PD keys; ``at`` is its key path (``pools[2]``)."""
    if pool.role is not None:
        raise ConfigError(f"{at}.role", "is set by `roles:`, not by hand")
    if pool.pd_pool is not None:
        raise ConfigError(f"{at}.pd_pool", "is set by `roles:`, not by hand")
    if pool.roles is None:
        return
    if ROLE_SEPARATOR in pool.name:
        raise ConfigError(f"{at}.name", f"a pool with roles may not contain "
                          f"{ROLE_SEPARATOR!r} (its role pools are <name>@prefill and "
                          "<name>@decode)")
    if pool.source not in (None, "static", "workers"):
        raise ConfigError(f"{at}.source", "a pool with roles reads its members from the file "
                          "and the admin API (static) or from workers; not from F5")
    if pool.members:
        raise ConfigError(f"{at}.members", "a pool with roles lists its members under "
                          "roles.prefill and roles.decode")
    ids: dict[str, str] = {}
    for role in ROLES:
        for j, entry in enumerate(getattr(pool.roles, role)):
            where = f"{at}.roles.{role}[{j}]"
            if not isinstance(entry, str):
                if not entry.id:
                    raise ConfigError(f"{where}.id", "must not be empty")
                if not 0 < entry.port < 65536:
                    raise ConfigError(f"{where}.port",
                                      f"must be a TCP port 1..65535, got {entry.port}")
                if not entry.host:
                    raise ConfigError(f"{where}.host", "must not be empty")
            try:
                parse_member_key(entry_address(entry))
            except MemberAddressError as err:
                raise ConfigError(where, str(err)) from None
            ident = entry_id(entry)
            if ident in ids:
                raise ConfigError(where if isinstance(entry, str) else f"{where}.id",
                                  f"duplicate instance id {ident!r} (also {ids[ident]})")
            ids[ident] = where
    _validate_settings(f"{at}.pd", pool, mode_names)


def _validate_settings(at: str, pool: PoolConfig, mode_names: set[str]) -> None:
    s = pool.pd
    for name in ("health_check_interval", "health_check_timeout"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{at}.{name}", f"must be > 0, got {getattr(s, name)}")
    for name in ("health_failure_threshold", "health_success_threshold"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{at}.{name}", f"must be >= 1, got {getattr(s, name)}")
    if not s.health_path.startswith("/"):
        raise ConfigError(f"{at}.health_path", "must start with '/'")
    if not 0 <= s.max_retries <= 10:
        raise ConfigError(f"{at}.max_retries", f"must be 0..10, got {s.max_retries}")
    if s.drain_timeout < 0:
        raise ConfigError(f"{at}.drain_timeout", f"must be >= 0, got {s.drain_timeout}")
    weights = ("load_weight", "kv_cache_weight", "latency_weight")
    for name in weights:
        if getattr(s, name) < 0:
            raise ConfigError(f"{at}.{name}", f"must be >= 0, got {getattr(s, name)}")
    known = set(STRATEGIES) | mode_names
    for name in ("strategy", "prefill_strategy", "decode_strategy"):
        value = getattr(s, name)
        if value is not None and value not in known:
            raise ConfigError(f"{at}.{name}", f"unknown strategy {value!r} (known: "
                              f"{', '.join(sorted(known))})")
    for role in ROLES:
        if s.strategy_for(role, pool.mode) == "weighted" and "weighted" not in mode_names \
                and sum(getattr(s, name) for name in weights) <= 0:
            raise ConfigError(f"{at}.load_weight", "the weighted strategy needs a weight > 0")


def expand_pd_pools(config: Config) -> Config:
    """``config`` with each pool that has ``roles`` replaced by its prefill and decode pools.

    A role's strategy names a ``modes`` entry, or one of the built-in strategies, for which
    a mode ``<strategy>@<pool>`` is added (the weighted one carries the pool's weights).
    """
    if not any(p.roles is not None for p in config.pools):
        return config
    modes = list(config.modes) or [ModeConfig()]
    named = {m.name for m in modes}
    pools: list[PoolConfig] = []
    origin: list[int] = []
    for i, pool in enumerate(config.pools):
        if pool.roles is None:
            pools.append(pool)
            origin.append(i)
            continue
        for role in ROLES:
            strategy = pool.pd.strategy_for(role, pool.mode)
            mode = strategy
            if strategy not in named:
                mode = f"{strategy}{ROLE_SEPARATOR}{pool.name}"
                if mode not in named:
                    named.add(mode)
                    s = pool.pd
                    modes.append(ModeConfig(name=mode, type=strategy, weighted=WeightedConfig(
                        load_weight=s.load_weight, kv_cache_weight=s.kv_cache_weight,
                        latency_weight=s.latency_weight)))
            pools.append(msgspec.structs.replace(
                pool, name=role_pool(pool.name, role), role=role, pd_pool=pool.name,
                model=pool.model or pool.name, mode=mode))
            origin.append(i)
    seen: set[tuple[str, str]] = set()
    for pool, i in zip(pools, origin, strict=True):
        if pool.ident in seen:
            raise ConfigError(f"pools[{i}].name", f"pool {pool.name}:{pool.partition} is "
                              "both configured and the role pool of a pool with roles")
        seen.add(pool.ident)
    return msgspec.structs.replace(config, pools=pools, modes=modes)
