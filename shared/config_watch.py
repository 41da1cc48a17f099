"""Hot reload: poll the config file, log each changed value, keep the old config on error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from shared.config import ConfigError, LoadedConfig, config_version, parse_config

log = logging.getLogger("llmsched.config")

Listener = Callable[[LoadedConfig, LoadedConfig], Awaitable[None] | None]

_SECRET_KEYS = {"APIkey", "password"}


def _flatten(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{path}[{i}]")
    else:
        yield path, value


def describe_changes(old: LoadedConfig, new: LoadedConfig) -> list[str]:
    """Human lines for every value that differs; pools are named, secrets masked."""
    lines: list[str] = []
    old_pools = {p.ident: p for p in old.config.pools}
    new_pools = {p.ident: p for p in new.config.pools}
    for ident in new_pools.keys() - old_pools.keys():
        lines.append(f"Added Pool {ident[0]}:{ident[1]}")
    for ident in old_pools.keys() - new_pools.keys():
        lines.append(f"Removed Pool {ident[0]}:{ident[1]}")
    for ident in new_pools.keys() & old_pools.keys():
        before = dict(_flatten(msgspec.to_builtins(old_pools[ident]), ""))
        after = dict(_flatten(msgspec.to_builtins(new_pools[ident]), ""))
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                shown = "***" if key.split(".")[-1] in _SECRET_KEYS else _show(after.get(key))
                leaf = key.split(".")[-1] if key.startswith("fallback.") else key
                lines.append(f"Updated Pool {ident[0]}:{ident[1]} {leaf}: {shown}")
    rest_old = msgspec.to_builtins(old.config)
    rest_new = msgspec.to_builtins(new.config)
    rest_old.pop("pools", None)
    rest_new.pop("pools", None)
    before = dict(_flatten(rest_old, ""))
    after = dict(_flatten(rest_new, ""))
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            shown = "***" if key.split(".")[-1] in _SECRET_KEYS else _show(after.get(key))
            lines.append(f"Updated {key}: {shown}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return repr(value) if isinstance(value, str) else str(value)


class ConfigWatcher:
    """Holds the live config of one service and reloads it every ``global.interval``."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.current = loaded
        self._listeners: list[Listener] = []
        self._path = Path(loaded.path)
        self._rejected = ""

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def check(self) -> bool:
        """Reload if the file changed; True when a new config took effect."""
        try:
            raw = await asyncio.to_thread(self._path.read_bytes)
        except OSError as err:
            log.error("Config reload: cannot read %s (%s); keeping version %s",
                      self._path, err.strerror or err, self.current.version)
            return False
        version = config_version(raw)
        if version in (self.current.version, self._rejected):
            return False
        try:
            config = parse_config(raw.decode("utf-8", errors="replace"), source=str(self._path))
        except ConfigError as err:
            self._rejected = version  # log a bad file once, not at every poll
            log.error("Config reload rejected (%s); keeping version %s",
                      err, self.current.version)
            return False
        new = LoadedConfig(config=config, version=version, path=str(self._path))
        old = self.current
        changes = describe_changes(old, new)
        self.current = new
        log.info("Config reloaded: version %s -> %s (%d changes)",
                 old.version, new.version, len(changes))
        for line in changes:
            log.info("%s", line)
        for listener in self._listeners:
            result = listener(old, new)
            if result is not None:
                await result
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.current.config.global_.interval)
            if stop.is_set():
                return
            try:
                await self.check()
            except Exception:
                log.exception("Config reload failed; keeping version %s", self.current.version)
