"""Which config file ``llmsched up`` runs on: the operator's, or the demo file kept across runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.up.demo import DEMO_HEADER, demo_config
from services.up.ports import PortChoice
from shared.config import ConfigError, LoadedConfig, load_config
from shared.http_server import free_port

LOCAL_HOSTS = ("127.0.0.1", "localhost")
"""An ``f5.host`` the demo's F5 emulator (on 127.0.0.1) serves."""


class ConfigFileError(Exception):
    """The config file cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class ConfigChoice:
    """The file in force, its API port rule, and one line telling the operator about it."""

    loaded: LoadedConfig
    api_port: PortChoice
    note: str
    f5_emulator_port: int | None = None
    """Where the demo's F5 emulator listens (the file's ``f5.port``); None: no emulator."""

    @property
    def path(self) -> Path:
        return Path(self.loaded.path)


def own_config(path: str, api_port: int | None, default_port: int) -> ConfigChoice:
    """The operator's ``--config`` file, used as it is."""
    file = Path(path).resolve()
    loaded = _load(file, "")
    return ConfigChoice(loaded, _api_port(file, loaded, api_port, default_port),
                        f"{file} (yours; hot-reloaded)")


def demo_config_file(run: Path, reset: bool, api_port: int | None, default_port: int
                     ) -> ConfigChoice:
    """``RUN/config.yaml``: written when absent (or on ``reset``, after a backup), else kept."""
    file = run / "config.yaml"
    if file.exists() and not reset:
        note = (f"{file} (kept from an earlier run with your edits; hot-reloaded; "
                "--reset-config writes a fresh demo config)")
    else:
        backup = _backup(file) if file.exists() else None
        file.write_text(DEMO_HEADER + yaml.safe_dump(demo_config(free_port()), sort_keys=False))
        note = (f"{file} (the demo config, written now; hot-reloaded; later runs keep your edits)"
                if backup is None else
                f"{file} (a fresh demo config; the previous one is saved as {backup})")
    hint = " (fix it, or run with --reset-config: the file is backed up first)"
    loaded = _load(file, hint)
    f5 = loaded.config.f5
    f5_port = f5.port if f5 is not None and f5.host in LOCAL_HOSTS else None
    return ConfigChoice(loaded, _api_port(file, loaded, api_port, default_port), note, f5_port)


def _load(file: Path, hint: str) -> LoadedConfig:
    try:
        return load_config(file)
    except ConfigError as err:
        raise ConfigFileError(f"{file}: {err}{hint}") from None


def _backup(file: Path) -> Path:
    """Copy ``file`` to a new ``NAME.bak-TIMESTAMP[-N]``; never replaces an existing file."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = file.read_bytes()
    for n in range(1000):
        backup = file.with_name(f"{file.name}.bak-{stamp}" + (f"-{n}" if n else ""))
        try:
            with open(backup, "xb") as out:
                out.write(data)
        except FileExistsError:
            continue
        return backup
    raise ConfigFileError(f"cannot find a free backup name for {file}")


def _api_port(file: Path, loaded: LoadedConfig, flag: int | None, default_port: int
              ) -> PortChoice:
    """``--api-port`` first, then ``global.api_port`` if the file names it, else the default."""
    if flag is not None:
        return PortChoice(flag, "--api-port")
    if _names_api_port(file):
        return PortChoice(loaded.config.global_.api_port, f"global.api_port in {file}")
    return PortChoice(default_port)


def _names_api_port(file: Path) -> bool:
    try:
        raw: Any = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError):
        return False
    section = raw.get("global") if isinstance(raw, dict) else None
    return isinstance(section, dict) and "api_port" in section
