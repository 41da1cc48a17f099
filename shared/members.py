"""Member keys: ``ip:port``, ``[v6]:port`` and ``nodename:port``."""

from __future__ import annotations

import ipaddress


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
