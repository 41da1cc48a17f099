"""Pure parsing of F5 iControl REST payloads (members, pools, login, error bodies)."""

from __future__ import annotations

import html
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from shared.members import member_key
from shared.messages import MemberInfo

# A member is eligible only when the monitor (or the admin) says it is up:
#   up       monitor passed;
#   unchecked no monitor assigned: BIG-IP itself load-balances to such members;
#   user-up  administratively marked up: BIG-IP sends it traffic.
# `checking` (first probe pending) is NOT eligible: BIG-IP has not confirmed it yet and an
# engine still loading its model answers the same way. Every other state (down, user-down,
# fqdn-*, anything a future release adds) is unavailable: failing closed keeps traffic off
# members we cannot vouch for.
UP_STATES = frozenset({"up", "unchecked", "user-up"})
# `user-disabled` = disabled (existing connections only) or, with user-down, forced offline.
ENABLED_SESSIONS = frozenset({"monitor-enabled", "user-enabled", ""})
PLACEHOLDER_ADDRESSES = frozenset({"any", "any6"})
POOL_NOT_FOUND_CODE = "01020036:3"
DEFAULT_TOKEN_TIMEOUT = 1200.0


class F5Error(Exception):
    """Base class of every F5 failure the collector handles."""


class F5PayloadError(F5Error, ValueError):
    """A 200 response whose JSON does not have the iControl REST shape we expect."""


@dataclass(frozen=True, slots=True)
class LoginToken:
    """An ``X-F5-Auth-Token`` and its lifetime in seconds."""

    token: str
    timeout: float


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The useful part of an error response: F5's ``code`` (when JSON) and a short message."""

    code: int | None
    message: str


def _items(payload: Any, what: str) -> list[Any]:
    if isinstance(payload, list):
        return payload
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        raise F5PayloadError(f"{what}: expected a JSON object or list, got {kind}")
    items = payload.get("items", [])  # F5 omits `items` for an empty collection
    if not isinstance(items, list):
        raise F5PayloadError(f"{what}: `items` is {type(items).__name__}, not a list")
    return items


def _text_field(item: dict[str, Any], field: str, what: str, *, required: bool = True) -> str:
    value = item.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise F5PayloadError(f"{what}: field {field!r} missing or not a string")
    return value


def strip_route_domain(address: str) -> str:
    """``10.1.1.5%2`` → ``10.1.1.5``; ``fd00::1%3`` → ``fd00::1``."""
    return address.split("%", 1)[0]


def member_port(name: str, address: str) -> int:
    """The port at the end of an F5 member name."""
    # F5 writes `10.0.0.1:8080` and `nodename:8080` with a colon, but a configured IPv6
    # member as `2001:db8::1.8080` (a dot, since colons belong to the address). FQDN
    # ephemeral members (`_auto_2607.f8b0.400a.80a..200e:80` in the v16.0.0 fixture of
    # F5Networks/f5-ansible-bigip) turn the address's colons into dots and keep `:port`.
    # So: digits after the only colon, else, for IPv6, digits after the last dot. The
    # mangled `_auto_` name is why the host always comes from `address`, never the name.
    head, sep, tail = name.rpartition(":")
    if not sep or ":" in head:
        # No colon, or an IPv6 literal in the name: only `addr.port` is left.
        ipv6 = ":" in name or ":" in address
        _, sep, tail = name.rpartition(".")
        if not ipv6:
            sep = ""
    if not (sep and tail.isdigit()):
        raise F5PayloadError(f"member {name!r}: no port after ':' (or '.' for IPv6)")
    port = int(tail)
    if not 0 < port < 65536:
        raise F5PayloadError(f"member {name!r}: port {port} is not 1..65535")
    return port


def is_fqdn_placeholder(item: dict[str, Any]) -> bool:
    """True for an FQDN template member (``any6`` address / ``fqdn-*`` state)."""
    address = item.get("address")
    state = item.get("state")
    fqdn_state = isinstance(state, str) and state.startswith("fqdn-")
    return address in PLACEHOLDER_ADDRESSES or fqdn_state


def is_available(state: str, session: str) -> bool:
    """F5 state/session → may the scheduler pick this member."""
    return state in UP_STATES and session in ENABLED_SESSIONS


def parse_member(item: Any) -> MemberInfo:
    """One ``tm:ltm:pool:members:membersstate`` item → MemberInfo."""
    if not isinstance(item, dict):
        raise F5PayloadError(f"member item is {type(item).__name__}, not an object")
    name = _text_field(item, "name", "member")
    address = _text_field(item, "address", f"member {name!r}")
    state = _text_field(item, "state", f"member {name!r}", required=False)
    session = _text_field(item, "session", f"member {name!r}", required=False)
    host = strip_route_domain(address)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise F5PayloadError(f"member {name!r}: address {address!r} is not an IP") from None
    port = member_port(name, host)
    return MemberInfo(
        key=member_key(host, port),
        host=host,
        port=port,
        available=is_available(state, session),
        name=name,
        state=state,
        session=session,
    )


def parse_members(payload: Any) -> list[MemberInfo]:
    """A members collection (or a bare list of member items) → the real endpoints."""
    # FQDN template members are dropped rather than returned unavailable: they carry no
    # address (`any6`), BIG-IP never sends them traffic, and their resolved addresses appear
    # as separate `_auto_` ephemeral members (kept). A template would only add a key that no
    # gateway ever sends and a host the scraper cannot reach.
    members: list[MemberInfo] = []
    for item in _items(payload, "members collection"):
        if isinstance(item, dict) and is_fqdn_placeholder(item):
            continue
        members.append(parse_member(item))
    return members


def list_pool_names(payload: Any, partition: str | None = None) -> list[str]:
    """Pool names of a pool collection, optionally only those in ``partition``."""
    names: list[str] = []
    for item in _items(payload, "pool collection"):
        if not isinstance(item, dict):
            raise F5PayloadError(f"pool item is {type(item).__name__}, not an object")
        name = _text_field(item, "name", "pool")
        # Checked here too: the `$filter` is an optimisation, not a guarantee.
        if partition is not None and item.get("partition", partition) != partition:
            continue
        names.append(name)
    return names


def parse_login(payload: Any) -> LoginToken:
    """A ``/mgmt/shared/authn/login`` response → token and timeout (seconds)."""
    token = payload.get("token") if isinstance(payload, dict) else None
    if not isinstance(token, dict):
        raise F5PayloadError("login response has no `token` object")
    value = token.get("token")
    if not isinstance(value, str) or not value:
        raise F5PayloadError("login response has no `token.token` string")
    timeout = token.get("timeout", DEFAULT_TOKEN_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise F5PayloadError("login response `token.timeout` is not a positive number")
    return LoginToken(token=value, timeout=float(timeout))


_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def parse_error_body(text: str, limit: int = 300) -> ErrorBody:
    """An error response body (F5 JSON, or the HTML restart page) → code and short message."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict):
            code = data.get("code")
            message = data.get("message")
            return ErrorBody(
                code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                message=str(message)[:limit] if message is not None else stripped[:limit],
            )
    if stripped.startswith("<"):
        title = _TITLE.search(stripped)
        body = stripped[title.end():] if title else stripped
        words = _SPACE.sub(" ", html.unescape(_TAG.sub(" ", body))).strip()
        head = _SPACE.sub(" ", html.unescape(title.group(1))).strip() if title else ""
        return ErrorBody(code=None, message=" | ".join(p for p in (head, words) if p)[:limit])
    return ErrorBody(code=None, message=_SPACE.sub(" ", stripped)[:limit])


def is_pool_not_found(message: str) -> bool:
    """The mcpd answer for a pool that does not exist (``01020036:3 ... was not found``)."""
    return POOL_NOT_FOUND_CODE in message


def is_not_registered(message: str) -> bool:
    """restjavad's answer while it (re)starts: ``URI path ... not registered``."""
    return "not registered" in message
