"""Keep deploy/docker-compose.yml and deploy/Dockerfile honest without a Docker engine.

The compose file is parsed and every service's command, mount, port and env var is
checked against the code (``services.cli``, the worker's and the simulator's command
lines, ``shared.config``, ``pyproject.toml``), in both of its shapes: the default (one
NATS node) and the ``nats-cluster`` profile with ``deploy/nats-cluster.env`` (three
nodes), each resolved as compose would (``${VAR:-default}`` interpolation, profiles).
Each checker returns a list of problems; the real files must give none, and every
checker is run once against a deliberately broken copy to prove it can fail. The
cluster's NATS commands are also run, on loopback, with the real nats-server.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import sys
import time
import tomllib
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import yaml
from setuptools import find_packages

from services import cli
from services.enginesim import cli as sim_cli
from services.enginesim.config import SimConfigError
from services.worker import main as worker_main
from shared.config import ConfigError, LoadedConfig, load_config, parse_config
from shared.embedded import EmbeddedServer, nats_server
from shared.http_server import free_port
from shared.members import parse_member_key

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
PYPROJECT = REPO / "pyproject.toml"

ENGINE_SIM = "engine-sim"
WORKER = "worker"
NATS_PORT = 4222
NATS_CLUSTER_ENV = DEPLOY / "nats-cluster.env"
REPLICATED_ROLES = ("scheduler", "collector")
"""Roles the compose file runs at least two replicas of."""
REDIS_PORT = 6379
NATS_IMAGES = ("nats",)
REDIS_IMAGES = ("redis", "valkey/valkey", "bitnami/redis", "bitnami/valkey")

# Which services read an env variable named by a ``*_env`` config key; a key not
# listed here is required on every llmsched service until someone decides otherwise.
ENV_KEY_READERS: dict[str, frozenset[str]] = {
    "f5.password_env": frozenset({"collector"}),
    "pools[].metrics.metric_pwd_env": frozenset({"collector"}),
    "pools[].metrics.apikey_env": frozenset({"collector"}),
}

LISTEN_ALL = ("0.0.0.0", "::")
"""Addresses a containerised server must bind so other containers can reach it."""

PROMETHEUS_IMAGES = ("prom/prometheus", "quay.io/prometheus/prometheus")
GRAFANA_IMAGES = ("grafana/grafana", "grafana/grafana-oss", "grafana/grafana-enterprise")
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
PROMETHEUS_PORT = 9090
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
LISTENER_ROLES = ("scheduler", "collector", "autoscaler")
"""Services whose /metrics is a listener of its own (``metrics.<role>_port``)."""


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Variant:
    """One shape of the compose file: the profiles switched on and the env file read."""

    name: str
    profiles: frozenset[str] = frozenset()
    env: dict[str, str] = field(default_factory=dict)


def env_file_vars(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a compose env file (comments and blanks skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key.strip()] = value.strip().strip("'\"")
    return out


def variants() -> list[Variant]:
    cluster_env = env_file_vars(NATS_CLUSTER_ENV)
    profiles = frozenset(p.strip() for p in cluster_env.get("COMPOSE_PROFILES", "").split(",")
                         if p.strip())
    return [Variant("default"), Variant("nats-cluster", profiles, cluster_env)]


_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
                  r"|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise ValueError(f"${{{name}}} is required: {default}")
        return value or ""

    return _VAR.sub(one, text)


def _interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: _interpolated(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolated(v, env) for v in node]
    return node


def resolve(raw: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """The compose file as ``docker compose`` would run it in ``variant``."""
    data: dict[str, Any] = _interpolated(raw, variant.env)
    data["services"] = {name: svc for name, svc in data["services"].items()
                        if not svc.get("profiles") or set(svc["profiles"]) & variant.profiles}
    return data


def load_raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def load_compose(variant: Variant | None = None) -> dict[str, Any]:
    return resolve(load_raw_compose(), variant or variants()[0])


def command_of(service: dict[str, Any]) -> list[str]:
    raw = service.get("command", [])
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def built_image_names(compose: dict[str, Any], base: Path) -> set[str]:
    """Image tags produced by a build of deploy/Dockerfile."""
    names = set()
    for svc in compose["services"].values():
        if _builds_our_image(svc, base) and svc.get("image"):
            names.add(str(svc["image"]))
    return names


def _builds_our_image(svc: dict[str, Any], base: Path) -> bool:
    build = svc.get("build")
    if build is None:
        return False
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    return ((base / context) / dockerfile).resolve() == DOCKERFILE.resolve()


def llmsched_services(compose: dict[str, Any], base: Path) -> dict[str, dict[str, Any]]:
    """Services running our image (built here, or the tag such a build produces)."""
    ours = built_image_names(compose, base)
    return {
        name: svc
        for name, svc in compose["services"].items()
        if _builds_our_image(svc, base) or str(svc.get("image", "")) in ours
    }


def role_of(svc: dict[str, Any]) -> str:
    cmd = command_of(svc)
    return cmd[0] if cmd else ""


def environment_of(svc: dict[str, Any], base: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    env_files = svc.get("env_file", [])
    for item in [env_files] if isinstance(env_files, str | dict) else env_files:
        path = item["path"] if isinstance(item, dict) else item
        file = base / path
        if file.is_file():
            for line in file.read_text().splitlines():
                key, sep, value = line.strip().partition("=")
                if sep and not key.startswith("#"):
                    env[key.strip()] = value
    raw = svc.get("environment", {})
    if isinstance(raw, dict):
        env.update({str(k): "" if v is None else str(v) for k, v in raw.items()})
    else:
        for item in raw:
            key, _, value = str(item).partition("=")
            env[key] = value
    return env


def depends_on_names(svc: dict[str, Any]) -> list[str]:
    deps = svc.get("depends_on", [])
    return list(deps) if isinstance(deps, dict | list) else []


def option_value(cmd: list[str], flag: str) -> str | None:
    for i, part in enumerate(cmd):
        if part == flag and i + 1 < len(cmd):
            return cmd[i + 1]
        if part.startswith(flag + "="):
            return part.split("=", 1)[1]
    return None


def container_ports(entries: list[Any]) -> list[int]:
    """Container-side ports of a ``ports:``/``expose:`` list (short and long syntax)."""
    ports = []
    for entry in entries:
        if isinstance(entry, dict):
            ports.append(int(str(entry["target"]).split("/")[0]))
            continue
        text = str(entry).split("/")[0]
        container = text.rpartition(":")[2]
        if "-" in container:
            low, high = (int(p) for p in container.split("-"))
            ports.extend(range(low, high + 1))
        else:
            ports.append(int(container))
    return ports


def published_ports(entries: list[Any]) -> list[tuple[int | None, int]]:
    """(host, container) pairs of a ``ports:`` list; host None when not published."""
    pairs: list[tuple[int | None, int]] = []
    for entry in entries:
        if isinstance(entry, dict):
            published = entry.get("published")
            pairs.append((int(published) if published else None, int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        if len(parts) == 1:
            pairs.append((None, int(parts[0])))
        else:
            pairs.append((int(parts[-2]) if parts[-2] else None, int(parts[-1])))
    return pairs


def mounts_of(svc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of every volume of a service."""
    for vol in svc.get("volumes", []):
        if isinstance(vol, dict):
            yield str(vol.get("source", "")), str(vol["target"])
        else:
            parts = str(vol).split(":")
            if len(parts) >= 2:
                yield parts[0], parts[1]


def host_path_for(svc: dict[str, Any], container_path: str, base: Path) -> Path | None:
    """The repository file that appears at ``container_path`` through a bind mount."""
    want = PurePosixPath(container_path)
    for source, target in mounts_of(svc):
        if not source.startswith((".", "/")):
            continue  # a named volume: nothing from the repository
        tgt = PurePosixPath(target)
        if want == tgt:
            return (base / source).resolve()
        if tgt in want.parents:
            return (base / source / want.relative_to(tgt)).resolve()
    return None


def config_env_refs(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(normalised key path, env variable name) for every ``*_env`` key set in a config."""
    if isinstance(value, msgspec.Struct):
        for field in msgspec.structs.fields(value):
            sub = getattr(value, field.name)
            key = f"{path}.{field.encode_name}" if path else field.encode_name
            if field.name.endswith("_env") and isinstance(sub, str) and sub:
                yield key, sub
            else:
                yield from config_env_refs(sub, key)
    elif isinstance(value, list):
        for item in value:
            yield from config_env_refs(item, f"{path}[]")
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from config_env_refs(item, f"{path}.{k}")


# --------------------------------------------------------------------------- checkers
# Each takes the parsed compose dict (and what else it needs) and returns problems.


def check_commands(compose: dict[str, Any], base: Path) -> list[str]:
    problems = []
    ours = llmsched_services(compose, base)
    if not ours:
        return ["no service builds deploy/Dockerfile"]
    for name, svc in ours.items():
        entrypoint = svc.get("entrypoint")
        if entrypoint is not None and command_of({"command": entrypoint}) != ["llmsched"]:
            problems.append(f"{name}: entrypoint overridden to {entrypoint!r}")
        cmd = command_of(svc)
        if not cmd:
            problems.append(f"{name}: no command")
            continue
        if cmd[0] == ENGINE_SIM:
            continue  # checked by check_engine_dispatch: main() hands it to the simulator
        if cmd[0] == WORKER:
            continue  # checked by check_worker with the worker's own command line
        try:
            args = cli.build_parser().parse_args(cmd)
        except SystemExit:
            problems.append(f"{name}: command {cmd} does not parse with services.cli")
            continue
        if args.command not in cli.SERVICES:
            problems.append(f"{name}: {args.command!r} is not a service subcommand")
    roles = {role_of(svc) for svc in ours.values()}
    for role in (*cli.SERVICES, WORKER, ENGINE_SIM):
        if role not in roles:
            problems.append(f"no service runs `llmsched {role}`")
    return problems


def check_engine_dispatch(compose: dict[str, Any], base: Path) -> list[str]:
    """Run services.cli.main on each engine command with the simulator replaced."""
    problems = []
    for name, svc in llmsched_services(compose, base).items():
        cmd = command_of(svc)
        if not cmd or cmd[0] != ENGINE_SIM:
            continue
        seen: list[list[str]] = []

        def fake_main(argv: list[str], _seen: list[list[str]] = seen) -> int:
            _seen.append(list(argv))
            return 0

        fake = types.ModuleType("services.enginesim.cli")
        fake.main = fake_main  # type: ignore[attr-defined]
        saved = {key: sys.modules.get(key) for key in ("services.enginesim.cli",)}
        sys.modules["services.enginesim.cli"] = fake
        try:
            try:
                rc = cli.main(cmd)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 2
            except Exception as exc:  # main() fell through to the service path
                problems.append(f"{name}: services.cli.main({cmd}) raised {exc!r}")
                continue
        finally:
            for key, module in saved.items():
                if module is None:
                    sys.modules.pop(key, None)
                else:
                    sys.modules[key] = module
        if seen != [cmd[1:]] or rc != 0:
            problems.append(f"{name}: services.cli.main does not hand {cmd} to the simulator")
            continue
        problems.extend(f"{name}: {p}" for p in _check_sim_args(cmd[1:]))
    return problems


def _check_sim_args(argv: list[str]) -> list[str]:
    """Parse and plan the simulator's arguments with its own CLI (no sockets opened)."""
    try:
        args = sim_cli.build_parser().parse_args(argv)
        plan = sim_cli.plan_fleet(args)
    except (SystemExit, SimConfigError) as exc:
        return [f"engine-sim arguments {argv} rejected: {exc}"]
    problems = []
    if args.host not in LISTEN_ALL:
        problems.append(f"engine-sim binds {args.host}: unreachable from other containers")
    if not plan:
        problems.append(f"engine-sim arguments {argv} start no engine")
    return problems


def sim_ports(cmd: list[str]) -> list[int]:
    """The ports an engine-sim command listens on."""
    try:
        return [port for _, port in sim_cli.plan_fleet(sim_cli.build_parser().parse_args(cmd[1:]))]
    except (SystemExit, SimConfigError):
        return []


def check_config_mounts(
    compose: dict[str, Any], base: Path
) -> tuple[list[str], dict[str, LoadedConfig]]:
    problems: list[str] = []
    loaded: dict[str, LoadedConfig] = {}
    for name, svc in llmsched_services(compose, base).items():
        cmd = command_of(svc)
        if not cmd or cmd[0] not in cli.SERVICES:
            continue
        target = option_value(cmd, "--config")
        if target is None:
            problems.append(f"{name}: no --config")
            continue
        host = host_path_for(svc, target, base)
        if host is None:
            problems.append(f"{name}: --config {target} is not inside a bind mount")
            continue
        if not host.is_file():
            problems.append(f"{name}: --config {target} maps to {host}, which does not exist")
            continue
        if REPO.resolve() not in host.parents:
            problems.append(f"{name}: --config {target} maps outside the repository ({host})")
            continue
        try:
            loaded[name] = load_config(host)
        except ConfigError as err:
            problems.append(f"{name}: {host} does not load: {err}")
    return problems, loaded


def check_api_port(
    compose: dict[str, Any], base: Path, configs: dict[str, LoadedConfig]
) -> list[str]:
    problems = []
    apis = [n for n, s in llmsched_services(compose, base).items() if role_of(s) == "api"]
    for name in apis:
        svc = compose["services"][name]
        if name not in configs:
            problems.append(f"{name}: no loadable config, cannot check its port")
            continue
        glob = configs[name].config.global_
        port = glob.api_port
        if glob.api_host not in ("0.0.0.0", "::", ""):
            problems.append(f"{name}: global.api_host {glob.api_host} is unreachable from outside")
        pairs = published_ports(svc.get("ports", []))
        if not any(host is not None and cont == port for host, cont in pairs):
            problems.append(f"{name}: global.api_port {port} is not published (ports: {pairs})")
        for _host, cont in pairs:
            if cont != port:
                problems.append(f"{name}: publishes container port {cont}, API listens on {port}")
        for cont in container_ports(svc.get("expose", [])):
            if cont != port:
                problems.append(f"{name}: exposes {cont}, API listens on {port}")
        test = " ".join(str(t) for t in (svc.get("healthcheck") or {}).get("test", []))
        for url_port in _loopback_ports(test):
            if url_port != port:
                problems.append(f"{name}: healthcheck probes port {url_port}, API is on {port}")
    return problems


def _loopback_ports(text: str) -> list[int]:
    ports = []
    for host in ("127.0.0.1:", "localhost:"):
        start = 0
        while (i := text.find(host, start)) >= 0:
            digits = ""
            for ch in text[i + len(host):]:
                if not ch.isdigit():
                    break
                digits += ch
            if digits:
                ports.append(int(digits))
            start = i + 1
    return ports


def _image_repo(image: str) -> str:
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":")[0]
    return name.removeprefix("docker.io/").removeprefix("library/")


def check_bus_urls(compose: dict[str, Any], base: Path) -> list[str]:
    problems = []
    services = compose["services"]
    wanted = (
        ("NATS_URL", ("nats",), NATS_PORT, NATS_IMAGES),
        ("REDIS_URL", ("redis", "rediss"), REDIS_PORT, REDIS_IMAGES),
    )
    for name, svc in llmsched_services(compose, base).items():
        if role_of(svc) not in cli.SERVICES:
            continue
        env = environment_of(svc, base)
        deps = depends_on_names(svc)
        for var, schemes, port, images in wanted:
            if var not in env:
                problems.append(f"{name}: {var} is not set")
                continue
            for url in env[var].split(","):
                parts = urlsplit(url.strip())
                if parts.scheme not in schemes:
                    problems.append(f"{name}: {var}={url} has scheme {parts.scheme!r}")
                    continue
                host, url_port = parts.hostname or "", parts.port or port
                if host not in services:
                    problems.append(f"{name}: {var}={url} names no compose service {host!r}")
                    continue
                if url_port != port:
                    problems.append(f"{name}: {var}={url} uses port {url_port}, want {port}")
                if _image_repo(str(services[host].get("image", ""))) not in images:
                    problems.append(f"{name}: {var} points at {host}, not a {images[0]} image")
                # A node of a profile cannot be a dependency (the default shape would not
                # start); the client library fails over to it once it runs.
                if host not in deps and not services[host].get("profiles"):
                    problems.append(f"{name}: does not depend_on {host}")
    return problems


def check_env_vars(
    compose: dict[str, Any], base: Path, configs: dict[str, LoadedConfig]
) -> list[str]:
    problems = []
    ours = llmsched_services(compose, base)
    for name, loaded in configs.items():
        role = role_of(ours[name])
        env = environment_of(ours[name], base)
        for key, var in config_env_refs(loaded.config):
            readers = ENV_KEY_READERS.get(key, frozenset(cli.SERVICES))
            if role in readers and var not in env:
                problems.append(f"{name}: config {key} names {var}, which is not set")
    return problems


def replicas_of(svc: dict[str, Any]) -> int:
    return int((svc.get("deploy") or {}).get("replicas", svc.get("scale", 1)))


def check_replicas(compose: dict[str, Any], base: Path) -> list[str]:
    problems = []
    for role in REPLICATED_ROLES:
        total = sum(replicas_of(svc) for svc in llmsched_services(compose, base).values()
                    if role_of(svc) == role)
        if total < 2:
            problems.append(f"{role} runs {total} replica(s), want >= 2")
    return problems


def check_depends_on(compose: dict[str, Any], base: Path) -> list[str]:
    services = compose["services"]
    problems = [
        f"{name}: depends_on {dep!r}, which is no service"
        for name, svc in services.items()
        for dep in depends_on_names(svc)
        if dep not in services
    ]
    problems += [
        f"{name}: depends_on {dep!r}, which runs only under a profile"
        for name, svc in services.items() if not svc.get("profiles")
        for dep in depends_on_names(svc)
        if dep in services and services[dep].get("profiles")
    ]
    return problems


def check_pool_engines(
    compose: dict[str, Any], base: Path, configs: dict[str, LoadedConfig]
) -> list[str]:
    problems = []
    services = compose["services"]
    members: set[tuple[str, int]] = set()
    for loaded in configs.values():
        for pool in loaded.config.pools:
            if loaded.config.pool_source(pool) == "static":
                members.update(parse_member_key(m) for m in pool.members)
    if not members:
        problems.append("the config has no static pool members to run")
    for host, port in sorted(members):
        svc = services.get(host)
        if svc is None:
            problems.append(f"pool member {host}:{port}: no compose service {host!r}")
            continue
        cmd = command_of(svc)
        if role_of(svc) != ENGINE_SIM:
            problems.append(f"pool member {host}:{port}: service {host} is not an engine-sim")
            continue
        listen = sim_ports(cmd)
        if port not in listen:
            problems.append(f"pool member {host}:{port}: {host} listens on {listen}")
        exposed = container_ports(svc.get("expose", [])) + [
            c for _, c in published_ports(svc.get("ports", []))
        ]
        if exposed and port not in exposed:
            problems.append(f"pool member {host}:{port}: {host} exposes {exposed}")
    return problems


# --------------------------------------------------------------------------- worker


def _worker_args(cmd: list[str]) -> Any:
    """The worker's parsed command line (None when it does not parse)."""
    try:
        return worker_main.build_parser().parse_args(cmd[1:])
    except SystemExit:
        return None


def check_worker(compose: dict[str, Any], base: Path,
                 configs: dict[str, LoadedConfig]) -> list[str]:
    """Each worker parses, listens where containers reach it and registers with an API."""
    problems: list[str] = []
    services = compose["services"]
    api_ports = {name: loaded.config.global_.api_port for name, loaded in configs.items()
                 if role_of(services[name]) == "api"}
    for name, svc in llmsched_services(compose, base).items():
        cmd = command_of(svc)
        if role_of(svc) != WORKER:
            continue
        args = _worker_args(cmd)
        if args is None:
            problems.append(f"{name}: {cmd} does not parse with the worker's command line")
            continue
        try:
            worker_main.options_from_args(args)
        except ValueError as err:
            problems.append(f"{name}: worker arguments rejected: {err}")
        if args.host not in LISTEN_ALL:
            problems.append(f"{name}: worker binds {args.host}: unreachable from other "
                            "containers")
        exposed = container_ports(svc.get("expose", [])) + [
            c for _, c in published_ports(svc.get("ports", []))]
        if args.port not in exposed:
            problems.append(f"{name}: worker listens on {args.port}, exposes {exposed}")
        if args.advertise_host != name or replicas_of(svc) != 1:
            problems.append(f"{name}: --advertise-host {args.advertise_host} (and 1 replica) "
                            f"is how other containers reach its engines; want {name}")
        if not args.worker_id:
            problems.append(f"{name}: no --worker-id: a recreated container would register as "
                            "another worker")
        manager = urlsplit(args.manager_url or "")
        if manager.hostname not in api_ports:
            problems.append(f"{name}: --manager-url {args.manager_url} is no API service "
                            f"({sorted(api_ports)})")
        elif (manager.port or 80) != api_ports[manager.hostname]:
            problems.append(f"{name}: --manager-url port {manager.port}, the API listens on "
                            f"{api_ports[manager.hostname]}")
        elif manager.hostname not in depends_on_names(svc):
            problems.append(f"{name}: does not depend_on {manager.hostname}")
    return problems


# --------------------------------------------------------------------------- NATS


NATS_VALUE_FLAGS = {"-a": "addr", "--addr": "addr", "--net": "addr", "-p": "port",
                    "--port": "port", "-m": "http_port", "--http_port": "http_port",
                    "-n": "server_name", "--name": "server_name",
                    "--server_name": "server_name", "--cluster": "cluster",
                    "--cluster_listen": "cluster", "--routes": "routes",
                    "--cluster_name": "cluster_name"}


def nats_flags(cmd: list[str]) -> tuple[dict[str, str], list[str]]:
    """(the flags the checks read, every other argument) of a nats-server command."""
    known: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(cmd):
        flag, eq, value = cmd[i].partition("=")
        if flag in NATS_VALUE_FLAGS:
            if not eq:
                i += 1
                value = cmd[i] if i < len(cmd) else ""
            known[NATS_VALUE_FLAGS[flag]] = value
        else:
            rest.append(cmd[i])
        i += 1
    return known, rest


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"nats://{url}")
    return parts.hostname or "", parts.port or default_port


def check_nats(compose: dict[str, Any], base: Path) -> list[str]:
    """NATS nodes: one, or a cluster whose routes connect every pair of nodes; every
    service's NATS_URL lists every node."""
    nodes = services_of_image(compose, NATS_IMAGES)
    problems: list[str] = []
    if not nodes:
        return ["no NATS service"]
    flags = {name: nats_flags(command_of(svc))[0] for name, svc in nodes.items()}
    for name, svc in nodes.items():
        f = flags[name]
        if int(f.get("port", NATS_PORT)) != NATS_PORT:
            problems.append(f"{name}: clients port {f['port']}, NATS_URL uses {NATS_PORT}")
        if not (svc.get("healthcheck") or {}).get("test"):
            problems.append(f"{name}: no healthcheck")
        if replicas_of(svc) != 1:
            problems.append(f"{name}: a NATS node is one container, not {replicas_of(svc)}")
    for name, svc in llmsched_services(compose, base).items():
        if role_of(svc) in cli.SERVICES:
            listed = {_host_port(u.strip(), NATS_PORT)[0]
                      for u in environment_of(svc, base).get("NATS_URL", "").split(",")}
            if missing := sorted(set(nodes) - listed):
                problems.append(f"{name}: NATS_URL does not list {', '.join(missing)}")
    if len(nodes) == 1:
        return problems
    names = [f.get("server_name", "") for f in flags.values()]
    if "" in names or len(set(names)) != len(names):
        problems.append(f"NATS nodes need distinct --server_name values, got {names}")
    if len({f.get("cluster_name", "") for f in flags.values()} - {""}) != 1 or any(
            "cluster_name" not in f for f in flags.values()):
        problems.append("NATS nodes do not share one --cluster_name")
    cluster_port: dict[str, int] = {}
    for name, f in flags.items():
        if "cluster" not in f:
            problems.append(f"{name}: no --cluster: it takes no routes")
            continue
        host, port = _host_port(f["cluster"], 6222)
        if host not in LISTEN_ALL:
            problems.append(f"{name}: --cluster binds {host}: unreachable from other nodes")
        cluster_port[name] = port
    routes: set[tuple[str, str]] = set()
    for name, f in flags.items():
        for url in filter(None, (u.strip() for u in f.get("routes", "").split(","))):
            host, port = _host_port(url, 6222)
            if host not in nodes:
                problems.append(f"{name}: route {url} names no NATS service")
            elif cluster_port.get(host) != port:
                problems.append(f"{name}: route {url}: {host} takes routes on "
                                f"{cluster_port.get(host)}")
            elif host != name:
                routes.add((name, host))
    for a in sorted(nodes):
        for b in sorted(nodes):
            if a < b and (a, b) not in routes and (b, a) not in routes:
                problems.append(f"no route between {a} and {b}: neither solicits the other, "
                                "so they connect only while a third node gossips them in")
    return problems


# --------------------------------------------------------------------------- monitoring


def services_of_image(compose: dict[str, Any], images: tuple[str, ...]) -> dict[str, Any]:
    return {name: svc for name, svc in compose["services"].items()
            if _image_repo(str(svc.get("image", ""))) in images}


def prometheus_doc(compose: dict[str, Any], base: Path) -> tuple[list[str], dict[str, Any]]:
    """The scrape config the compose file's Prometheus reads (problems if it cannot)."""
    proms = services_of_image(compose, PROMETHEUS_IMAGES)
    if len(proms) != 1:
        return [f"want one Prometheus service, found {sorted(proms)}"], {}
    name, svc = next(iter(proms.items()))
    target = option_value(command_of(svc), "--config.file") or PROMETHEUS_CONFIG
    host = host_path_for(svc, target, base)
    if host is None or not host.is_file():
        return [f"{name}: --config.file {target} is not a repository file in a bind mount"], {}
    doc = yaml.safe_load(host.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("scrape_configs"), list):
        return [f"{name}: {host} has no scrape_configs"], {}
    return [], doc


def metrics_ports(compose: dict[str, Any], base: Path,
                  configs: dict[str, LoadedConfig]) -> dict[str, set[int]]:
    """Compose service → the ports it serves a Prometheus /metrics on."""
    ports: dict[str, set[int]] = {}
    for name, svc in llmsched_services(compose, base).items():
        role, cmd = role_of(svc), command_of(svc)
        if role == ENGINE_SIM:
            ports[name] = set(sim_ports(cmd))
        elif name in configs and role == "api":
            ports[name] = {configs[name].config.global_.api_port}
        elif role == WORKER:
            args = _worker_args(cmd)
            ports[name] = {args.port} if args is not None else set()
        elif name in configs and role in LISTENER_ROLES:
            port = configs[name].config.metrics.port_of(role)
            ports[name] = {port} if port else set()
    return ports


def scrape_targets(doc: dict[str, Any]) -> Iterator[tuple[str, str, int | None, str]]:
    """(job, host, port, metrics path) of every static and DNS target of a scrape config."""
    for job in doc.get("scrape_configs", []):
        name, path = str(job.get("job_name")), str(job.get("metrics_path", "/metrics"))
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                host, _, port = str(target).rpartition(":")
                yield name, host, int(port) if port.isdigit() else None, path
        for dns in job.get("dns_sd_configs", []):
            for host in dns.get("names", []):
                yield name, str(host), dns.get("port"), path


def check_prometheus(compose: dict[str, Any], base: Path, configs: dict[str, LoadedConfig],
                     doc: dict[str, Any] | None = None) -> list[str]:
    """Every scrape target is a compose service's metrics port; every service is scraped."""
    problems: list[str] = []
    if doc is None:
        problems, doc = prometheus_doc(compose, base)
        if problems:
            return problems
    services = compose["services"]
    ours = llmsched_services(compose, base)
    ports = metrics_ports(compose, base, configs)
    scraped: set[str] = set()
    for job, host, port, path in scrape_targets(doc):
        if host not in services:
            problems.append(f"job {job}: target {host} is no compose service")
            continue
        scraped.add(host)
        if path != "/metrics":
            problems.append(f"job {job}: metrics_path {path}, the services serve /metrics")
        if port not in ports.get(host, set()):
            problems.append(f"job {job}: {host}:{port} is not a metrics port of {host} "
                            f"(it serves /metrics on {sorted(ports.get(host, set()))})")
        jobs = [j for j in doc["scrape_configs"] if j.get("job_name") == job]
        replicas = replicas_of(services[host])
        if replicas > 1 and not any(j.get("dns_sd_configs") for j in jobs):
            problems.append(f"job {job}: {host} runs {replicas} replicas; a static target "
                            "reaches one of them (use dns_sd_configs)")
    for name, svc in ours.items():
        role = role_of(svc)
        if role in (*cli.SERVICES, WORKER) and name not in scraped:
            problems.append(f"nothing scrapes {name} (llmsched {role})")
        if role in LISTENER_ROLES and name in configs:
            metrics = configs[name].config.metrics
            if metrics.port_of(role) in (None, 0):
                problems.append(f"{name}: metrics.{role}_port is not set: no /metrics to scrape")
            if metrics.host not in LISTEN_ALL:
                problems.append(f"{name}: metrics.host {metrics.host} is unreachable from the "
                                "Prometheus container")
    return problems


def check_grafana(compose: dict[str, Any], base: Path,
                  datasources: list[dict[str, Any]] | None = None) -> list[str]:
    """Grafana's provisioning: a datasource at the Prometheus service, the dashboards mounted."""
    grafanas = services_of_image(compose, GRAFANA_IMAGES)
    if len(grafanas) != 1:
        return [f"want one Grafana service, found {sorted(grafanas)}"]
    name, svc = next(iter(grafanas.items()))
    provisioning = host_path_for(svc, GRAFANA_PROVISIONING, base)
    if provisioning is None or not provisioning.is_dir():
        return [f"{name}: {GRAFANA_PROVISIONING} is not a repository folder in a bind mount"]
    problems: list[str] = []
    if datasources is None:
        datasources = [ds for f in sorted((provisioning / "datasources").glob("*.y*ml"))
                       for ds in yaml.safe_load(f.read_text()).get("datasources", [])]
    uids = set()
    proms = set(services_of_image(compose, PROMETHEUS_IMAGES))
    for ds in datasources:
        if ds.get("type") != "prometheus":
            continue
        uids.add(ds.get("uid"))
        url = urlsplit(str(ds.get("url", "")))
        if url.hostname not in proms or (url.port or 80) != PROMETHEUS_PORT:
            problems.append(f"datasource {ds.get('name')}: {ds.get('url')} is not the "
                            f"Prometheus service ({sorted(proms)} on {PROMETHEUS_PORT})")
        elif url.hostname not in depends_on_names(svc):
            problems.append(f"{name}: does not depend_on {url.hostname}")
    if not uids:
        problems.append("no Prometheus datasource is provisioned")
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
                 for p in yaml.safe_load(f.read_text()).get("providers", [])]
    dashboards: list[Path] = []
    for provider in providers:
        path = str((provider.get("options") or {}).get("path", ""))
        folder = host_path_for(svc, path, base)
        if folder is None or not folder.is_dir():
            problems.append(f"dashboard provider {provider.get('name')}: {path} is not a "
                            "repository folder in a bind mount")
            continue
        dashboards += sorted(folder.glob("*.json"))
    if not dashboards:
        problems.append("no dashboard JSON is provisioned")
    for file in dashboards:
        used = {str(node.get("uid")) for node in _datasource_refs(json.loads(file.read_text()))}
        problems.extend(f"{file.name}: datasource uid {uid} is not provisioned"
                        for uid in sorted(used - {str(u) for u in uids}))
    return problems


def _datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and ds.get("type") == "prometheus":
            yield ds
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def compose_problems(compose: dict[str, Any], base: Path = DEPLOY) -> list[str]:
    problems = []
    problems += check_commands(compose, base)
    problems += check_engine_dispatch(compose, base)
    mount_problems, configs = check_config_mounts(compose, base)
    problems += mount_problems
    problems += check_api_port(compose, base, configs)
    problems += check_bus_urls(compose, base)
    problems += check_env_vars(compose, base, configs)
    problems += check_replicas(compose, base)
    problems += check_depends_on(compose, base)
    problems += check_worker(compose, base, configs)
    problems += check_nats(compose, base)
    problems += check_pool_engines(compose, base, configs)
    problems += check_prometheus(compose, base, configs)
    problems += check_grafana(compose, base)
    return problems


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            instr, _, args = full.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    if args.startswith("["):
        value = json.loads(args)
        return [str(v) for v in value]
    return shlex.split(args)


def _copy_sources(args: str) -> list[str]:
    parts = _exec_form(args)
    parts = [p for p in parts if not p.startswith("--")]
    return parts[:-1]


def check_dockerfile(text: str, pyproject: dict[str, Any], repo: Path = REPO) -> list[str]:
    problems = []
    instrs = dockerfile_instructions(text)
    froms = [i for i, (ins, _) in enumerate(instrs) if ins == "FROM"]
    if not froms:
        return ["Dockerfile has no FROM"]
    for i in froms:
        image = instrs[i][1].split()[0]
        if not image.startswith("python:3.11-slim"):
            problems.append(f"FROM {image}: want python:3.11-slim")
    final = instrs[froms[-1]:]

    scripts = pyproject.get("project", {}).get("scripts", {})
    if "llmsched" not in scripts:
        problems.append("pyproject.toml declares no `llmsched` console script")
    entry = [_exec_form(a) for ins, a in final if ins == "ENTRYPOINT"]
    if not entry or entry[-1] != ["llmsched"]:
        problems.append(f"final ENTRYPOINT is {entry[-1] if entry else None}, want ['llmsched']")

    users = [a for ins, a in final if ins == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage runs as root (no non-root USER)")

    installs = [a for ins, a in instrs if ins == "RUN" and "pip install" in a]
    if not any(_installs_project(a) for a in installs):
        problems.append("no RUN pip install of the project (`.`)")
    for cmd in installs:
        if any(extra in cmd for extra in ("[test]", "[dev]", "[embedded]", "-e ")):
            problems.append(f"image installs dev/test extras or editable: {cmd}")

    copied: list[str] = []
    for ins, args in instrs:
        if ins in ("COPY", "ADD") and "--from" not in args:
            sources = _copy_sources(args)
            matched = [s for s in sources if _glob_repo(repo, s)]
            if not matched:
                problems.append(f"{ins} {args}: no source exists in the repository")
            for s in sources:
                if not any(ch in s for ch in "*?[") and not (repo / s).exists():
                    problems.append(f"{ins} {args}: {s} does not exist in the repository")
            copied.extend(str(p.relative_to(repo)) for s in sources for p in _glob_repo(repo, s))
    if "pyproject.toml" not in copied and "." not in copied:
        problems.append("pyproject.toml is not copied into the image")
    find = pyproject.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    packages = find_packages(str(repo), include=find.get("include", ["*"]))
    for top in sorted({p.split(".")[0] for p in packages}):
        if top not in copied and "." not in copied:
            problems.append(f"package {top!r} is not copied into the image")
    return problems


def _installs_project(run: str) -> bool:
    for segment in run.replace("&&", ";").split(";"):
        words = shlex.split(segment)
        if "pip" in " ".join(words) and "install" in words:
            targets = words[words.index("install") + 1:]
            if any(t == "." or t.startswith(".[") or t == "./" for t in targets):
                return True
    return False


def _glob_repo(repo: Path, pattern: str) -> list[Path]:
    if pattern == ".":
        return [repo]
    if any(ch in pattern for ch in "*?["):
        return [p for p in repo.iterdir() if fnmatch.fnmatch(p.name, pattern)]
    return [repo / pattern] if (repo / pattern).exists() else []


def check_compose_build(compose: dict[str, Any], base: Path) -> list[str]:
    ours = llmsched_services(compose, base)
    problems = []
    for name, svc in ours.items():
        if "build" in svc:
            build = svc["build"]
            context = build if isinstance(build, str) else build.get("context", ".")
            if (base / context).resolve() != REPO.resolve():
                problems.append(f"{name}: build context {context} is not the repository root")
    return problems


# --------------------------------------------------------------------------- tests


VARIANTS = {v.name: v for v in variants()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(VARIANTS["default"])


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return load_compose(VARIANTS["nats-cluster"])


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compose_file_is_consistent_with_the_code(variant: str) -> None:
    assert compose_problems(load_compose(VARIANTS[variant])) == []


def test_nats_one_node_by_default_three_in_the_cluster_profile(
        compose: dict[str, Any], cluster: dict[str, Any]) -> None:
    assert sorted(services_of_image(compose, NATS_IMAGES)) == ["nats"]
    nodes = sorted(services_of_image(cluster, NATS_IMAGES))
    assert nodes == ["nats", "nats-2", "nats-3"], nodes
    assert VARIANTS["nats-cluster"].profiles == {"nats-cluster"}
    for name, svc in llmsched_services(cluster, DEPLOY).items():
        if role_of(svc) in cli.SERVICES:
            urls = environment_of(svc, DEPLOY)["NATS_URL"].split(",")
            assert sorted(_host_port(u, NATS_PORT)[0] for u in urls) == nodes, (name, urls)
    # Every other service is the same in both shapes.
    others = set(compose["services"])
    assert set(cluster["services"]) - others == {"nats-2", "nats-3"}


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    cases = {"${SET}": "x", "${UNSET}": "", "${UNSET:-d}": "d", "${EMPTY:-d}": "d",
             "${EMPTY-d}": "", "${UNSET-d}": "d", "$SET/$$SET": "x/$SET", "a${SET}b": "axb"}
    assert {k: interpolate(k, env) for k in cases} == cases
    with pytest.raises(ValueError, match="needed"):
        interpolate("${UNSET:?needed}", env)


def test_compose_build_uses_repository_root(compose: dict[str, Any]) -> None:
    assert check_compose_build(compose, DEPLOY) == []


def test_every_service_role_and_three_engines_present(compose: dict[str, Any]) -> None:
    roles = [role_of(s) for s in llmsched_services(compose, DEPLOY).values()]
    assert {*cli.SERVICES, WORKER} <= set(roles)
    for role in REPLICATED_ROLES:
        assert sum(replicas_of(s) for s in llmsched_services(compose, DEPLOY).values()
                   if role_of(s) == role) == 2, role
    engines = [s for s in compose["services"].values() if role_of(s) == ENGINE_SIM]
    assert len(engines) == 3
    speeds = {option_value(command_of(s), "--speed") for s in engines}
    assert len(speeds) == 3, f"engines should run at different speeds, got {speeds}"


def test_infrastructure_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name in ("nats", "redis"):
        assert compose["services"][name].get("healthcheck", {}).get("test"), name


def test_dockerfile_installs_project_with_console_script(pyproject: dict[str, Any]) -> None:
    assert check_dockerfile(DOCKERFILE.read_text(), pyproject) == []


def test_config_env_refs_finds_every_env_key() -> None:
    config = parse_config(_CONFIG_WITH_SECRETS)
    assert sorted(config_env_refs(config)) == [
        ("f5.password_env", "F5_PASSWORD"),
        ("pools[].metrics.metric_pwd_env", "METRICS_PASSWORD"),
    ]


_CONFIG_WITH_SECRETS = """
f5: {host: 192.0.2.1, password_env: F5_PASSWORD}
pools:
  - name: p
    source: f5
    engine_type: vllm
    metrics: {metric_user: u, metric_pwd_env: METRICS_PASSWORD}
"""


def test_env_var_check_requires_secret_on_collector_only(compose: dict[str, Any]) -> None:
    loaded = LoadedConfig(config=parse_config(_CONFIG_WITH_SECRETS), version="x", path="x")
    ours = llmsched_services(compose, DEPLOY)
    configs = {n: loaded for n, s in ours.items() if role_of(s) in cli.SERVICES}
    problems = check_env_vars(compose, DEPLOY, configs)
    # The collector has F5_PASSWORD but not METRICS_PASSWORD; nobody else reads them.
    assert problems == ["collector: config pools[].metrics.metric_pwd_env names "
                        "METRICS_PASSWORD, which is not set"]
    broken = copy.deepcopy(compose)
    del broken["services"]["collector"]["environment"]["F5_PASSWORD"]
    problems = check_env_vars(broken, DEPLOY, configs)
    assert any("F5_PASSWORD" in p for p in problems)


Mutation = Callable[[dict[str, Any]], None]


def _svc(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda c: c["services"][name]


def _set(name: str, key: str, value: Any) -> Mutation:
    return lambda c: _svc(name)(c).__setitem__(key, value)


def _env(name: str, key: str, value: str | None) -> Mutation:
    def mutate(c: dict[str, Any]) -> None:
        env = _svc(name)(c)["environment"]
        if value is None:
            env.pop(key)
        else:
            env[key] = value

    return mutate


BROKEN: list[tuple[str, Mutation, str]] = [
    ("unknown subcommand", _set("autoscaler", "command", ["autoscale", "--config", "x"]),
     "does not parse"),
    ("missing --config", _set("scheduler", "command", ["scheduler"]), "does not parse"),
    ("role missing", lambda c: c["services"].pop("autoscaler"), "llmsched autoscaler"),
    ("entrypoint override", _set("api", "entrypoint", ["python"]), "entrypoint"),
    ("engine-sim typo", _set("engine-2", "command", ["engine_sim", "--port", "8002"]),
     "does not parse"),
    ("engine-sim bad flag", _set("engine-1", "command",
                                 ["engine-sim", "--port", "x", "--engine", "vllm",
                                  "--model", "m"]), "engine-sim arguments"),
    ("config not mounted", _set("collector", "volumes", []), "not inside a bind mount"),
    ("config path wrong", _set("api", "command",
                               ["api", "--config", "/etc/llmsched/other.yaml"]),
     "does not exist"),
    ("config mount from wrong dir", _set("scheduler", "volumes", ["./f5:/etc/llmsched:ro"]),
     "does not exist"),
    ("api port mismatch", _set("api", "ports", ["8080:9090"]), "not published"),
    ("api port unpublished", _set("api", "ports", []), "not published"),
    ("nats url host", _env("scheduler", "NATS_URL", "nats://natz:4222"), "no compose service"),
    ("nats url port", _env("api", "NATS_URL", "nats://nats:4223"), "port 4223"),
    ("redis url port", _env("collector", "REDIS_URL", "redis://redis:6380/0"), "port 6380"),
    ("redis url at nats", _env("autoscaler", "REDIS_URL", "redis://nats:6379/0"),
     "not a redis image"),
    ("redis url unset", _env("api", "REDIS_URL", None), "REDIS_URL is not set"),
    ("one scheduler", lambda c: c["services"]["scheduler"].pop("deploy"), "replica"),
    ("depends_on ghost", lambda c: c["services"]["api"]["depends_on"].__setitem__(
        "ghost", {"condition": "service_started"}), "ghost"),
    ("engine missing", lambda c: c["services"].pop("engine-3"), "no compose service"),
    ("engine port", _set("engine-2", "command",
                         ["engine-sim", "--port", "9002", "--engine", "vllm", "--model", "m"]),
     "listens on [9002]"),
    ("engine on loopback", _set("engine-3", "command",
                                ["engine-sim", "--port", "8003", "--engine", "vllm"]),
     "unreachable from other containers"),
    ("prometheus config unmounted", _set("prometheus", "volumes", []), "bind mount"),
    ("prometheus gone", lambda c: c["services"].pop("prometheus"), "one Prometheus"),
    ("grafana provisioning unmounted", _set("grafana", "volumes",
                                            ["./grafana/dashboards:/var/lib/grafana/dashboards"]),
     "provisioning is not"),
    ("dashboards unmounted", _set("grafana", "volumes",
                                  ["./grafana/provisioning:/etc/grafana/provisioning:ro"]),
     "dashboard provider"),
    ("grafana without prometheus", _set("grafana", "depends_on", {}), "depend_on prometheus"),
    ("autoscaler scaled, scraped by name", lambda c: c["services"]["autoscaler"].__setitem__(
        "deploy", {"replicas": 2}), "reaches one of them"),
    ("one collector", lambda c: c["services"]["collector"].pop("deploy"),
     "collector runs 1 replica"),
    ("worker missing", lambda c: c["services"].pop("worker"), "llmsched worker"),
    ("worker bad flag", _set("worker", "command", ["worker", "--port", "x"]),
     "does not parse with the worker"),
    ("worker on loopback", _set("worker", "command",
                                ["worker", "--port", "8100", "--advertise-host", "worker",
                                 "--worker-id", "w", "--manager-url", "http://api:8080"]),
     "unreachable from other containers"),
    ("worker port unexposed", _set("worker", "expose", ["8101"]), "exposes [8101]"),
    ("worker advertised by IP", _set("worker", "command",
                                     ["worker", "--host", "0.0.0.0", "--port", "8100",
                                      "--worker-id", "w", "--manager-url", "http://api:8080"]),
     "--advertise-host"),
    ("worker manager port", _set("worker", "command",
                                 ["worker", "--host", "0.0.0.0", "--port", "8100",
                                  "--advertise-host", "worker", "--worker-id", "w",
                                  "--manager-url", "http://api:9090"]), "the API listens on"),
    ("worker manager host", _set("worker", "command",
                                 ["worker", "--host", "0.0.0.0", "--port", "8100",
                                  "--advertise-host", "worker", "--worker-id", "w",
                                  "--manager-url", "http://scheduler:8080"]),
     "is no API service"),
    ("worker without api", _set("worker", "depends_on", {}), "does not depend_on api"),
    ("nats client port", lambda c: c["services"]["nats"]["command"].extend(["-p", "4223"]),
     "clients port 4223"),
    ("depends on a profile", lambda c: c["services"]["nats"].__setitem__(
        "profiles", ["nats-cluster"]), "runs only under a profile"),
]


@pytest.mark.parametrize(("mutate", "expected"),
                         [(m, e) for _, m, e in BROKEN], ids=[n for n, _, _ in BROKEN])
def test_compose_checker_catches(compose: dict[str, Any], mutate: Mutation,
                                 expected: str) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = compose_problems(broken)
    assert any(expected in p for p in problems), problems


def _nats_flag(name: str, flag: str, value: str | None) -> Mutation:
    """Set (or with None drop) one flag of a NATS node's command."""

    def mutate(c: dict[str, Any]) -> None:
        cmd = c["services"][name]["command"]
        if flag in cmd:
            i = cmd.index(flag)
            del cmd[i:i + 2]
        if value is not None:
            cmd.extend([flag, value])

    return mutate


def _both(first: Mutation, second: Mutation) -> Mutation:
    def mutate(c: dict[str, Any]) -> None:
        first(c)
        second(c)

    return mutate


def _nats_url(name: str, url: str) -> Mutation:
    return lambda c: c["services"][name]["environment"].__setitem__("NATS_URL", url)


CLUSTER_BREAKS: list[tuple[str, Mutation, str]] = [
    ("pair without a route", _both(_nats_flag("nats-3", "--routes", None),
                                   _nats_flag("nats-2", "--routes", "nats://nats:6222")),
     "no route between nats-2 and nats-3"),
    ("route to a ghost", _nats_flag("nats-2", "--routes", "nats://nats:6222,nats://nats-9:6222"),
     "nats-9:6222 names no NATS service"),
    ("route to the wrong port", _nats_flag("nats-3", "--routes",
                                           "nats://nats:6223,nats://nats-2:6222"),
     "takes routes on 6222"),
    ("another cluster name", _nats_flag("nats-3", "--cluster_name", "other"),
     "one --cluster_name"),
    ("same server name", _nats_flag("nats-3", "--server_name", "nats-2"),
     "distinct --server_name"),
    ("no cluster listener", _nats_flag("nats", "--cluster", None), "nats: no --cluster"),
    ("cluster on loopback", _nats_flag("nats-2", "--cluster", "nats://127.0.0.1:6222"),
     "unreachable from other nodes"),
    ("NATS_URL misses a node", _nats_url("api", "nats://nats:4222,nats://nats-2:4222"),
     "api: NATS_URL does not list nats-3"),
    ("node without healthcheck", lambda c: c["services"]["nats-3"].pop("healthcheck"),
     "nats-3: no healthcheck"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in CLUSTER_BREAKS],
                         ids=[n for n, _, _ in CLUSTER_BREAKS])
def test_cluster_checker_catches(cluster: dict[str, Any], mutate: Mutation,
                                 expected: str) -> None:
    broken = copy.deepcopy(cluster)
    mutate(broken)
    problems = compose_problems(broken)
    assert any(expected in p for p in problems), problems


def loopback_nats_argv(cmd: list[str], me: str, cluster_ports: dict[str, int]) -> list[str]:
    """A compose NATS node's arguments for nats-server on loopback: its cluster listener
    and routes moved to ``cluster_ports`` (clients and monitoring ports are added by the
    caller), every other flag kept."""
    flags, rest = nats_flags(cmd)
    argv = list(rest)
    for key in ("server_name", "cluster_name"):
        if key in flags:
            argv += [f"--{key}", flags[key]]
    if "cluster" in flags:
        argv += ["--cluster", f"nats://127.0.0.1:{cluster_ports[me]}"]
    routes = [f"nats://127.0.0.1:{cluster_ports[_host_port(u.strip(), 6222)[0]]}"
              for u in flags.get("routes", "").split(",") if u.strip()]
    if routes:
        argv += ["--routes", ",".join(routes)]
    return argv


def _peers(monitor_port: int) -> set[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/routez", timeout=2) as r:
            routes = json.loads(r.read()).get("routes") or []
    except (urllib.error.URLError, OSError, ValueError):
        return set()
    return {str(route.get("remote_name")) for route in routes}


@pytest.mark.integration
def test_cluster_nats_commands_form_a_cluster_that_survives_any_node_restarting(
        cluster: dict[str, Any], tmp_path: Path) -> None:
    """The profile's three NATS commands, run by the real nats-server on loopback, route to
    each other; with node 1 (the one every route names) down, node 2 restarts and still
    finds node 3; node 1 back, all three are routed again."""
    nodes = services_of_image(cluster, NATS_IMAGES)
    cluster_ports = {name: free_port() for name in nodes}
    monitor = {name: free_port() for name in nodes}
    servers: dict[str, EmbeddedServer] = {
        name: nats_server(workdir=str(tmp_path), log_name=f"{name}.log", extra=[
            *loopback_nats_argv(command_of(svc), name, cluster_ports),
            "-m", str(monitor[name])])
        for name, svc in nodes.items()}
    names = {name: nats_flags(command_of(svc))[0]["server_name"] for name, svc in nodes.items()}

    def wait_mesh(up: list[str], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        seen: dict[str, set[str]] = {}
        while time.monotonic() < deadline:
            seen = {n: _peers(monitor[n]) for n in up}
            if all(seen[n] == {names[o] for o in up if o != n} for n in up):
                return
            time.sleep(0.2)
        logs = {n: servers[n].log_tail(600) for n in up}
        raise AssertionError(f"nodes {up} not routed to each other: peers {seen}; logs {logs}")

    try:
        for server in servers.values():
            server.start()
        wait_mesh(list(nodes))
        servers["nats"].kill()
        servers["nats-2"].stop()
        servers["nats-2"].start()
        wait_mesh(["nats-2", "nats-3"])
        servers["nats"].start()
        wait_mesh(list(nodes))
    finally:
        for server in servers.values():
            server.stop()


def _configs(compose: dict[str, Any]) -> dict[str, LoadedConfig]:
    problems, configs = check_config_mounts(compose, DEPLOY)
    assert problems == []
    return configs


def _job(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(j for j in doc["scrape_configs"] if j["job_name"] == name)
    return found


PROMETHEUS_BREAKS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("collector port", lambda d: _job(d, "llmsched-collector")["dns_sd_configs"][0].__setitem__(
        "port", 9999), "collector:9999 is not a metrics port"),
    ("collector replicas behind one name", lambda d: _job(d, "llmsched-collector").update(
        dns_sd_configs=[], static_configs=[{"targets": ["collector:9102"]}]),
     "reaches one of them"),
    ("worker unscraped", lambda d: d["scrape_configs"].remove(_job(d, "llmsched-worker")),
     "nothing scrapes worker"),
    ("worker port", lambda d: _job(d, "llmsched-worker")["static_configs"][0].__setitem__(
        "targets", ["worker:8080"]), "worker:8080 is not a metrics port"),
    ("scheduler port", lambda d: _job(d, "llmsched-scheduler")["dns_sd_configs"][0].__setitem__(
        "port", 9102), "scheduler:9102 is not a metrics port"),
    ("api unscraped", lambda d: d["scrape_configs"].remove(_job(d, "llmsched-api")),
     "nothing scrapes api"),
    ("ghost target", lambda d: _job(d, "engines")["static_configs"][0]["targets"].append(
        "engine-9:8009"), "engine-9 is no compose service"),
    ("wrong path", lambda d: _job(d, "llmsched-autoscaler").__setitem__("metrics_path", "/m"),
     "metrics_path /m"),
    ("scheduler replicas behind one name", lambda d: _job(d, "llmsched-scheduler").update(
        dns_sd_configs=[], static_configs=[{"targets": ["scheduler:9101"]}]),
     "reaches one of them"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in PROMETHEUS_BREAKS],
                         ids=[n for n, _, _ in PROMETHEUS_BREAKS])
def test_prometheus_checker_catches(compose: dict[str, Any],
                                    mutate: Callable[[dict[str, Any]], None],
                                    expected: str) -> None:
    configs = _configs(compose)
    problems, doc = prometheus_doc(compose, DEPLOY)
    assert problems == [] and check_prometheus(compose, DEPLOY, configs, doc) == []
    mutate(doc)
    problems = check_prometheus(compose, DEPLOY, configs, doc)
    assert any(expected in p for p in problems), problems


def test_prometheus_checker_needs_the_listener_ports_in_the_config(
        compose: dict[str, Any]) -> None:
    configs = _configs(compose)
    for name in ("collector",):
        old = configs[name]
        bare = msgspec.structs.replace(old.config, metrics=msgspec.structs.replace(
            old.config.metrics, collector_port=None, host="127.0.0.1"))
        configs[name] = msgspec.structs.replace(old, config=bare)
    problems = check_prometheus(compose, DEPLOY, configs)
    assert any("metrics.collector_port is not set" in p for p in problems), problems
    assert any("metrics.host 127.0.0.1 is unreachable" in p for p in problems), problems


def test_grafana_checker_catches_a_datasource_elsewhere(compose: dict[str, Any]) -> None:
    assert check_grafana(compose, DEPLOY) == []
    wrong = [{"name": "p", "type": "prometheus", "uid": "prometheus",
              "url": "http://prometheus:9091"}]
    assert any("is not the Prometheus service" in p
               for p in check_grafana(compose, DEPLOY, wrong))
    other_uid = [{**wrong[0], "url": "http://prometheus:9090", "uid": "other"}]
    assert any("datasource uid prometheus is not provisioned" in p
               for p in check_grafana(compose, DEPLOY, other_uid))


def test_build_checker_catches_wrong_context(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["build"] = {"context": ".", "dockerfile": "../deploy/Dockerfile"}
    assert any("build context" in p for p in check_compose_build(broken, DEPLOY))


DOCKER_BREAKS: list[tuple[str, Callable[[str], str], str]] = [
    ("entrypoint", lambda t: t.replace('ENTRYPOINT ["llmsched"]', 'ENTRYPOINT ["python"]'),
     "ENTRYPOINT"),
    ("no install", lambda t: t.replace("pip install .", "pip install llmsched"),
     "pip install of the project"),
    ("root", lambda t: t.replace("USER 10001:10001", "USER root"), "root"),
    ("test extras", lambda t: t.replace("pip install .", "pip install .[test]"), "extras"),
    ("missing package", lambda t: t.replace("COPY services ./services\n", ""), "'services'"),
    ("missing source", lambda t: t.replace("COPY shared ./shared", "COPY sharedx ./shared"),
     "sharedx"),
    ("base image", lambda t: t.replace("FROM python:3.11-slim AS build",
                                       "FROM python:3.12 AS build"), "python:3.12"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in DOCKER_BREAKS],
                         ids=[n for n, _, _ in DOCKER_BREAKS])
def test_dockerfile_checker_catches(pyproject: dict[str, Any], mutate: Callable[[str], str],
                                    expected: str) -> None:
    text = DOCKERFILE.read_text()
    broken = mutate(text)
    assert broken != text, "the mutation no longer applies to deploy/Dockerfile"
    problems = check_dockerfile(broken, pyproject)
    assert any(expected in p for p in problems), problems


def test_dockerfile_checker_needs_console_script(pyproject: dict[str, Any]) -> None:
    broken = copy.deepcopy(pyproject)
    broken["project"]["scripts"] = {"llmsched-api": "services.cli:main"}
    assert any("console script" in p for p in check_dockerfile(DOCKERFILE.read_text(), broken))
