"""Member keys: ``ip:port``, ``[v6]:port`` and ``nodename:port``."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from shared.messages import MemberInfo, PoolSnapshot

if TYPE_CHECKING:
    from shared.config import PoolConfig


class MemberAddressError(ValueError):
    """A member string is not ``host:port``."""


def parse_member_key(key: str) -> tuple[str, int]:
    """Split ``10.0.0.1:8000`` / ``[fd00::1]:8000`` / ``node-a:8000`` into host and port."""
    if not key or key != key.strip():
        raise MemberAddressError(f"member {key!r} must be host:port without spaces")
    if key.startswith("["):
        host, sep, rest = key[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise MemberAddressError(f"member {key!r}: IPv6 members are [addr]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise MemberAddressError(f"member {key!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = key.rpartition(":")
        if not sep or not host:
            raise MemberAddressError(f"member {key!r} must be host:port")
        if ":" in host:
            raise MemberAddressError(f"member {key!r}: write IPv6 members as [addr]:port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MemberAddressError(f"member {key!r}: port must be 1..65535")
    return host, int(port_text)


def member_key(host: str, port: int) -> str:
    """The key a gateway sends for ``host``/``port`` (IPv6 bracketed)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_host(host: str) -> str:
    """Host as it appears in a URL authority."""
    return f"[{host}]" if ":" in host else host


def static_snapshot(pool: PoolConfig, fetched_at: float,
                    engine_type: str | None = None) -> PoolSnapshot:
    """A ``source: static`` pool's members as the config lists them, all available, keys
    normalised as a gateway sends them."""
    members = []
    for entry in pool.members:
        host, port = parse_member_key(entry)
        members.append(MemberInfo(key=member_key(host, port), host=host, port=port, name=entry))
    return PoolSnapshot(pool=pool.name, partition=pool.partition,
                        engine_type=engine_type or pool.engine_type, source="static",
                        members=members, fetched_at=fetched_at)
