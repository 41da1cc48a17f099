"""Ports of ``llmsched up``: a port the operator named is used or refused, never moved."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from shared.http_server import bind_socket

WILDCARDS = ("0.0.0.0", "::", "")


class PortError(Exception):
    """A port cannot be used; the message names it, who asked for it and what holds it."""


@dataclass(frozen=True)
class PortChoice:
    """A port and who chose it: ``named_by`` is None for the unnamed default only."""

    port: int
    named_by: str | None = None


def bind_api(host: str, choice: PortChoice) -> tuple[socket.socket, str | None]:
    """The API's listening socket, and a note when the unnamed default had to move."""
    try:
        return bind_socket(host, choice.port), None
    except OSError as err:
        if err.errno != errno.EADDRINUSE or choice.named_by is not None:
            raise PortError(_refusal(host, choice, err)) from None
    sock = bind_socket(host, 0)
    moved = int(sock.getsockname()[1])
    return sock, (f"Port {choice.port} (the default API port) is in use{_held_by(choice.port)};"
                  f" the API listens on port {moved} instead (--api-port N names one)")


def check_free(host: str, choice: PortChoice) -> None:
    """Raise :class:`PortError` unless a child process can listen on the port now."""
    try:
        bind_socket(host, choice.port).close()
    except OSError as err:
        raise PortError(_refusal(host, choice, err)) from None


def _refusal(host: str, choice: PortChoice, err: OSError) -> str:
    who = f" ({choice.named_by})" if choice.named_by else ""
    if err.errno == errno.EADDRINUSE:
        return (f"port {choice.port}{who} is already in use{_held_by(choice.port)}; "
                "stop that process or name another port")
    return f"cannot listen on {host}:{choice.port}{who}: {err.strerror or err}"


def _held_by(port: int) -> str:
    holder = port_holder(port)
    return f" by {holder}" if holder else ""


def port_holder(port: int, proc: Path = Path("/proc")) -> str | None:
    """``pid N (command line)`` of a process listening on ``port``, when this user can see it."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return f"pid {pid_dir.name} ({_command(pid_dir)})"
    return "a process this user cannot inspect"


def _listening_inodes(port: int, proc: Path) -> set[str]:
    """``socket:[inode]`` names of TCP sockets listening on ``port`` (/proc/net/tcp, tcp6)."""
    found: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                    continue
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found.add(f"socket:[{fields[9]}]")
    return found


def _command(pid_dir: Path) -> str:
    try:
        argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    return text if len(text) <= 120 else text[:117] + "..."


def display_host(host: str) -> str:
    """The host to put in printed URLs for a listening address."""
    if host in WILDCARDS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
