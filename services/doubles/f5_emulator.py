"""An F5 BIG-IP iControl REST emulator on a real socket: pools, members, auth and faults."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import msgspec
import uvicorn
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from shared.config import LOG_LEVELS
from shared.logs import setup_logging
from shared.members import MemberAddressError, parse_member_key

log = logging.getLogger("llmsched.f5_emulator")

VERSION = "16.0.0"
SELF = "https://localhost/mgmt"
FaultKind = Literal["mcpd_lost", "restarting", "not_registered", "pool_not_found", "delay", "hang"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
HANG_LIMIT = 300.0
"""A ``hang`` ends after this long even if nobody clears it (or at ``clear_faults``)."""

RESTARTING_PAGE = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
 "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=utf-8" />
<meta http-equiv="refresh" content="5" />
<title>BIG-IP&reg; - Configuration Utility restarting...</title>
<style type="text/css">body { font-family: Verdana, Arial, sans-serif; font-size: 12px; }</style>
</head>
<body>
<div id="banner"><div id="logo"></div></div>
<div id="message">
<h1>Configuration Utility restarting...</h1>
<p>The Configuration Utility is restarting. This page will reload automatically
when the Configuration Utility is available again.</p>
</div>
</body>
</html>
"""

BASIC_DENIED_PAGE = """<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">
<html><head>
<title>401 Unauthorized</title>
</head><body>
<h1>Unauthorized</h1>
<p>This server could not verify that you
are authorized to access the document
requested.  Either you supplied the wrong
credentials (e.g., bad password), or your
browser doesn't understand how to supply
the credentials required.</p>
</body></html>
"""


class EmulatedMember(msgspec.Struct, kw_only=True):
    """One pool member as the emulated BIG-IP stores it (F5 field values)."""

    name: str
    """``10.0.0.1:8000``, ``fd00::1.8000``, ``node-a:8000`` or ``_auto_...``."""
    address: str
    state: str = "up"
    session: str = "monitor-enabled"
    ephemeral: bool = False
    fqdn: str | None = None
    """``fqdn.tmName`` for FQDN members (templates and their ``_auto_`` children)."""
    autopopulate: bool = False
    monitor: str = "default"
    ratio: int = 1
    priority_group: int = 0
    generation: int = 0


def member_from_spec(spec: str) -> EmulatedMember:
    """``10.0.0.1:8000``, ``[fd00::1]:8000``, ``10.1.1.5%2:80`` or ``node-a:8000@10.0.0.5``."""
    name, at, node_address = spec.partition("@")
    try:
        host, port = parse_member_key(name)
    except MemberAddressError as err:
        raise ValueError(str(err)) from None
    if at:
        return EmulatedMember(name=f"{host}:{port}", address=node_address)
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"member {spec!r}: a nodename member needs @address") from None
    # BIG-IP separates an IPv6 address from its port with a dot.
    return EmulatedMember(name=f"{host}.{port}" if ":" in host else f"{host}:{port}", address=host)


def _as_member(value: str | EmulatedMember | Mapping[str, Any]) -> EmulatedMember:
    if isinstance(value, EmulatedMember):
        return value
    if isinstance(value, str):
        return member_from_spec(value)
    return msgspec.convert(dict(value), EmulatedMember)


def parse_pool_arg(text: str) -> tuple[str, str, list[EmulatedMember]]:
    """``Common/demo-pool=127.0.0.1:9001,127.0.0.1:9002`` → partition, name, members."""
    path, eq, specs = text.partition("=")
    if not eq:
        raise ValueError(f"pool {text!r}: expected [PARTITION/]NAME=MEMBER,MEMBER")
    partition, slash, name = path.strip("/").rpartition("/")
    members = [member_from_spec(s.strip()) for s in specs.split(",") if s.strip()]
    return (partition if slash else "Common"), name, members


@dataclass
class Counters:
    """What the emulator has seen, for tests."""

    requests: int = 0
    """Every request under ``/mgmt/``."""
    login_attempts: int = 0
    logins: int = 0
    """Successful token logins."""
    unauthorized: int = 0
    """401 answers."""
    basic_auth: int = 0
    """Requests authenticated with basic auth."""
    token_deletes: int = 0
    faults: int = 0
    """Requests answered (or delayed) by an injected fault."""


@dataclass
class Fault:
    """An injected failure; ``remaining`` None = until cleared."""

    kind: str
    remaining: int | None = 1
    delay: float = 0.0
    path_prefix: str = "/mgmt/"


class _FaultRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kind: str
    count: int | None = 1
    delay: float = 0.0
    path_prefix: str = "/mgmt/"


class _MemberPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    state: str | None = None
    session: str | None = None


def tilde_ref(partition: str, name: str) -> str:
    """``~Partition~name`` as in selfLinks."""
    return f"~{partition}~{name.replace('/', '~')}"


def _split_ref(ref: str) -> tuple[str, str]:
    parts = [p for p in ref.split("~") if p]
    if not ref.startswith("~") or len(parts) < 2:
        return "Common", ref
    return parts[0], "/".join(parts[1:])


_FILTER = re.compile(r"^\s*partition\s+eq\s+(\S+)\s*$")


class F5Emulator:
    """An ASGI app answering the iControl REST subset the collector uses."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        token_lifetime: float = 1200.0,
        clock: Callable[[], float] = time.monotonic,
        token_login_status: int | None = None,
        basic_auth: bool = True,
    ) -> None:
        self.users = dict(users) if users is not None else {"admin": "admin"}
        """Local users (name → password); all of them may use basic auth."""
        self.token_lifetime = token_lifetime
        """Seconds a new token lives (reported as ``token.timeout``)."""
        self.token_login_status = token_login_status
        """When set, logins are refused with this status (a box with token login disabled)."""
        self.basic_auth = basic_auth
        self.counters = Counters()
        self.request_log: deque[str] = deque(maxlen=1000)
        """Raw path and query of recent ``/mgmt/`` requests, oldest first."""
        self._clock = clock
        self._pools: dict[tuple[str, str], list[EmulatedMember]] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._fault: Fault | None = None
        self._release = asyncio.Event()
        self._generation = 1
        self._operation_id = 1000
        self._router = Router(
            routes=[
                Route("/mgmt/shared/authn/login", self._login, methods=["POST"]),
                Route("/mgmt/shared/authz/tokens/{token}", self._delete_token,
                      methods=["DELETE"]),
                Route("/mgmt/tm/ltm/pool", self._list_pools, methods=["GET"]),
                Route("/mgmt/tm/ltm/pool/{ref}", self._get_pool, methods=["GET"]),
                Route("/mgmt/tm/ltm/pool/{ref}/members", self._get_members, methods=["GET"]),
                Route("/_emulator/state", self._http_state, methods=["GET"]),
                Route("/_emulator/pools/{partition}/{name}", self._http_put_pool,
                      methods=["PUT"]),
                Route("/_emulator/pools/{partition}/{name}", self._http_delete_pool,
                      methods=["DELETE"]),
                Route("/_emulator/pools/{partition}/{name}/members", self._http_add_member,
                      methods=["POST"]),
                Route("/_emulator/pools/{partition}/{name}/members/{member}",
                      self._http_patch_member, methods=["PATCH"]),
                Route("/_emulator/pools/{partition}/{name}/members/{member}",
                      self._http_remove_member, methods=["DELETE"]),
                Route("/_emulator/faults", self._http_inject_fault, methods=["POST"]),
                Route("/_emulator/faults", self._http_clear_faults, methods=["DELETE"]),
                Route("/_emulator/tokens/expire", self._http_expire_tokens, methods=["POST"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: counts and logs ``/mgmt/`` requests and serves injected faults first."""
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/mgmt/"):
            self.counters.requests += 1
            raw = scope.get("raw_path") or path.encode()
            query = scope.get("query_string", b"")
            self.request_log.append((raw + b"?" + query if query else raw).decode("latin-1"))
            response = await self._apply_fault(path)
            if response is not None:
                await response(scope, receive, send)
                return
        await self._router(scope, receive, send)

    # -- Python control API -----------------------------------------------------------------

    def set_pool(
        self,
        name: str,
        members: Iterable[str | EmulatedMember | Mapping[str, Any]] = (),
        partition: str = "Common",
    ) -> None:
        """Create or replace a pool with these members."""
        converted = [_as_member(m) for m in members]
        for member in converted:
            member.generation = self._bump()
        self._pools[(partition, name)] = converted

    def delete_pool(self, name: str, partition: str = "Common") -> None:
        """Remove a pool (later fetches get the ``01020036:3`` 404)."""
        self._pools.pop((partition, name), None)

    def members(self, name: str, partition: str = "Common") -> list[EmulatedMember]:
        """The pool's members (KeyError when the pool does not exist)."""
        return self._pools[(partition, name)]

    def add_member(
        self, pool: str, member: str | EmulatedMember | Mapping[str, Any], partition: str = "Common"
    ) -> EmulatedMember:
        """Add (or replace, by name) one member."""
        new = _as_member(member)
        new.generation = self._bump()
        current = [m for m in self._pools[(partition, pool)] if m.name != new.name]
        self._pools[(partition, pool)] = [*current, new]
        return new

    def remove_member(self, pool: str, member_name: str, partition: str = "Common") -> None:
        """Remove one member by its F5 name."""
        current = self._pools[(partition, pool)]
        self._pools[(partition, pool)] = [m for m in current if m.name != member_name]

    def set_member(
        self,
        pool: str,
        member_name: str,
        *,
        state: str | None = None,
        session: str | None = None,
        partition: str = "Common",
    ) -> EmulatedMember:
        """Change a member's state and/or session (e.g. ``user-down``/``user-disabled``)."""
        for member in self._pools[(partition, pool)]:
            if member.name == member_name:
                member.state = state if state is not None else member.state
                member.session = session if session is not None else member.session
                member.generation = self._bump()
                return member
        raise KeyError(f"pool /{partition}/{pool} has no member {member_name!r}")

    def inject_fault(
        self,
        kind: str,
        count: int | None = 1,
        *,
        delay: float = 0.0,
        path_prefix: str = "/mgmt/",
    ) -> None:
        """Answer the next ``count`` matching requests (None = until cleared) with a failure."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(FAULT_KINDS)})")
        self._fault = Fault(kind=kind, remaining=count, delay=delay, path_prefix=path_prefix)
        log.info("Fault %s injected for %s requests under %s", kind,
                 "all" if count is None else count, path_prefix)

    def clear_faults(self) -> None:
        """Stop injecting failures and release requests held by ``delay``/``hang``."""
        if self._fault is not None:
            log.info("Fault %s cleared", self._fault.kind)
        self._fault = None
        self._release.set()
        self._release = asyncio.Event()

    def expire_tokens(self) -> None:
        """Make every issued token expired (as after its timeout)."""
        now = self._clock()
        self._tokens = {t: (user, min(until, now)) for t, (user, until) in self._tokens.items()}

    @property
    def active_tokens(self) -> int:
        """Tokens issued, not deleted and not expired."""
        now = self._clock()
        return sum(1 for _, until in self._tokens.values() if until > now)

    def state(self) -> dict[str, Any]:
        """Pools, counters and the active fault as JSON-able data."""
        return {
            "pools": {
                f"{part}/{name}": [msgspec.to_builtins(m) for m in members]
                for (part, name), members in sorted(self._pools.items())
            },
            "counters": asdict(self.counters),
            "fault": asdict(self._fault) if self._fault else None,
            "active_tokens": self.active_tokens,
        }

    # -- faults -----------------------------------------------------------------------------

    async def _apply_fault(self, path: str) -> Response | None:
        fault = self._fault
        if fault is None or not path.startswith(fault.path_prefix):
            return None
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._fault = None
        self.counters.faults += 1
        if fault.kind in ("delay", "hang"):
            wait = HANG_LIMIT if fault.kind == "hang" else fault.delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), timeout=wait)
            return None
        if fault.kind == "mcpd_lost":
            return JSONResponse(
                {"code": 500, "message": "The connection to mcpd has been lost, try again.",
                 "errorStack": [], "apiError": 32768001},
                status_code=500,
            )
        if fault.kind == "restarting":
            return HTMLResponse(RESTARTING_PAGE, status_code=503)
        if fault.kind == "not_registered":
            shown = path.replace("~", "?")  # as BIG-IP prints it
            return JSONResponse(
                {"code": 404,
                 "message": f"URI path {shown} not registered.  Please verify URI is supported"
                            " and wait for /available suffix to be responsive.",
                 "restOperationId": self._next_operation(), "kind": ":resterrorresponse"},
                status_code=404,
            )
        ref = path.removeprefix("/mgmt/tm/ltm/pool/").split("/", 1)[0]
        partition, name = _split_ref(ref) if ref and ref != path else ("Common", "my-pool")
        return self._pool_not_found(partition, name)

    # -- helpers ----------------------------------------------------------------------------

    def _bump(self) -> int:
        self._generation += 1
        return self._generation

    def _next_operation(self) -> int:
        self._operation_id += 1
        return self._operation_id

    def _rest_error(self, request: Request, status: int, message: str) -> JSONResponse:
        if status == 401:
            self.counters.unauthorized += 1
        client = request.client.host if request.client else "127.0.0.1"
        return JSONResponse(
            {"code": status, "message": message, "referer": client,
             "restOperationId": self._next_operation(), "kind": ":resterrorresponse"},
            status_code=status,
        )

    @staticmethod
    def _pool_not_found(partition: str, name: str) -> JSONResponse:
        return JSONResponse(
            {"code": 404,
             "message": f"01020036:3: The requested Pool (/{partition}/{name}) was not found.",
             "errorStack": [], "apiError": 3},
            status_code=404,
        )

    def _authenticate(self, request: Request) -> Response | None:
        token = request.headers.get("x-f5-auth-token")
        if token is not None:
            entry = self._tokens.get(token)
            if entry is None:
                return self._rest_error(request, 401, "X-F5-Auth-Token does not exist.")
            if self._clock() >= entry[1]:
                del self._tokens[token]
                return self._rest_error(request, 401, "X-F5-Auth-Token has expired.")
            return None
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            try:
                pair = base64.b64decode(authorization[6:], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                pair = ""
            user, _, password = pair.partition(":")
            if self.basic_auth and user in self.users and self.users[user] == password:
                self.counters.basic_auth += 1
                return None
            self.counters.unauthorized += 1
            return HTMLResponse(
                BASIC_DENIED_PAGE, status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="Enterprise Manager"'},
            )
        client = request.client.host if request.client else "127.0.0.1"
        return self._rest_error(
            request, 401,
            "Authorization failed: no user authentication header or token detected."
            f" Uri:http://localhost:8100{request.url.path} Referrer:{client} Sender:{client}",
        )

    def _member_json(self, partition: str, pool: str, m: EmulatedMember) -> dict[str, Any]:
        fqdn: dict[str, str] = {"autopopulate": "enabled" if m.autopopulate else "disabled"}
        if m.fqdn:
            fqdn["tmName"] = m.fqdn
        member_ref = f"~{partition}~{m.name}"
        return {
            "kind": "tm:ltm:pool:members:membersstate",
            "name": m.name,
            "partition": partition,
            "fullPath": f"/{partition}/{m.name}",
            "generation": m.generation,
            "selfLink": f"{SELF}/tm/ltm/pool/{tilde_ref(partition, pool)}/members/{member_ref}"
                        f"?ver={VERSION}",
            "address": m.address,
            "connectionLimit": 0,
            "dynamicRatio": 1,
            "ephemeral": "true" if m.ephemeral else "false",
            "fqdn": fqdn,
            "inheritProfile": "enabled",
            "logging": "disabled",
            "monitor": m.monitor,
            "priorityGroup": m.priority_group,
            "rateLimit": "disabled",
            "ratio": m.ratio,
            "session": m.session,
            "state": m.state,
        }

    def _pool_json(self, partition: str, name: str) -> dict[str, Any]:
        ref = tilde_ref(partition, name)
        members = self._pools[(partition, name)]
        return {
            "kind": "tm:ltm:pool:poolstate",
            "name": name,
            "partition": partition,
            "fullPath": f"/{partition}/{name}",
            "generation": max((m.generation for m in members), default=1),
            "selfLink": f"{SELF}/tm/ltm/pool/{ref}?ver={VERSION}",
            "allowNat": "yes",
            "allowSnat": "yes",
            "ignorePersistedWeight": "disabled",
            "ipTosToClient": "pass-through",
            "ipTosToServer": "pass-through",
            "linkQosToClient": "pass-through",
            "linkQosToServer": "pass-through",
            "loadBalancingMode": "round-robin",
            "minActiveMembers": 0,
            "minUpMembers": 0,
            "minUpMembersAction": "failover",
            "minUpMembersChecking": "disabled",
            "queueDepthLimit": 0,
            "queueOnConnectionLimit": "disabled",
            "queueTimeLimit": 0,
            "reselectTries": 0,
            "serviceDownAction": "none",
            "slowRampTime": 10,
            "membersReference": {
                "link": f"{SELF}/tm/ltm/pool/{ref}/members?ver={VERSION}",
                "isSubcollection": True,
            },
        }

    # -- iControl REST handlers -------------------------------------------------------------

    async def _login(self, request: Request) -> Response:
        self.counters.login_attempts += 1
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            return self._rest_error(request, 400, "Found invalid JSON body in the request.")
        if self.token_login_status is not None:
            return self._rest_error(request, self.token_login_status, "Authentication failed.")
        user = body.get("username")
        provider = body.get("loginProviderName", "tmos")
        if (
            provider not in ("tmos", "local")
            or not isinstance(user, str)
            or self.users.get(user) != body.get("password")
        ):
            return self._rest_error(request, 401, "Authentication failed.")
        token = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=")
        self._tokens[token] = (user, self._clock() + self.token_lifetime)
        self.counters.logins += 1
        now = time.time()
        timeout: float | int = self.token_lifetime
        if float(timeout).is_integer():
            timeout = int(timeout)
        return JSONResponse({
            "username": user,
            "loginReference": {
                "link": f"{SELF}/cm/system/authn/providers/{provider}/1f44a60e/login"
            },
            "loginProviderName": provider,
            "token": {
                "token": token,
                "name": token,
                "userName": user,
                "authProviderName": provider,
                "user": {"link": f"{SELF}/shared/authz/users/{user}"},
                "timeout": timeout,
                "startTime": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
                             + "+0000",
                "address": request.client.host if request.client else "127.0.0.1",
                "partition": "[All]",
                "generation": 1,
                "lastUpdateMicros": int(now * 1e6),
                "expirationMicros": int((now + self.token_lifetime) * 1e6),
                "kind": "shared:authz:tokens:authtokenitemstate",
                "selfLink": f"{SELF}/shared/authz/tokens/{token}",
            },
            "generation": 0,
            "lastUpdateMicros": 0,
        })

    async def _delete_token(self, request: Request) -> Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        token = request.path_params["token"]
        entry = self._tokens.pop(token, None)
        if entry is None:
            return self._rest_error(request, 404, f"Token {token} not found.")
        self.counters.token_deletes += 1
        return JSONResponse({"token": token, "name": token, "userName": entry[0],
                             "kind": "shared:authz:tokens:authtokenitemstate",
                             "selfLink": f"{SELF}/shared/authz/tokens/{token}"})

    async def _list_pools(self, request: Request) -> Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        wanted: str | None = None
        filter_text = request.query_params.get("$filter")
        self_link = f"{SELF}/tm/ltm/pool?ver={VERSION}"
        if filter_text is not None:
            match = _FILTER.match(filter_text)
            if match is None:
                return self._rest_error(request, 400, f"Invalid filter: {filter_text}")
            wanted = match.group(1)
            self_link = f"{SELF}/tm/ltm/pool?$filter=partition+eq+{wanted}&ver={VERSION}"
        items = [
            self._pool_json(part, name)
            for part, name in sorted(self._pools)
            if wanted is None or part == wanted
        ]
        return JSONResponse(
            {"kind": "tm:ltm:pool:poolcollectionstate", "selfLink": self_link, "items": items}
        )

    async def _get_pool(self, request: Request) -> Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        partition, name = _split_ref(request.path_params["ref"])
        if (partition, name) not in self._pools:
            return self._pool_not_found(partition, name)
        return JSONResponse(self._pool_json(partition, name))

    async def _get_members(self, request: Request) -> Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        partition, name = _split_ref(request.path_params["ref"])
        members = self._pools.get((partition, name))
        if members is None:
            return self._pool_not_found(partition, name)
        return JSONResponse({
            "kind": "tm:ltm:pool:members:memberscollectionstate",
            "selfLink": f"{SELF}/tm/ltm/pool/{tilde_ref(partition, name)}/members?ver={VERSION}",
            "items": [self._member_json(partition, name, m) for m in members],
        })

    # -- HTTP control API (unauthenticated: a loopback test double) -------------------------

    async def _http_state(self, request: Request) -> Response:
        return JSONResponse(self.state())

    @staticmethod
    async def _json(request: Request) -> Any:
        return msgspec.json.decode(await request.body() or b"{}")

    async def _control(self, action: Callable[[], Any]) -> Response:
        try:
            result = action()
        except KeyError as err:
            return JSONResponse({"error": str(err.args[0]) if err.args else "not found"},
                                status_code=404)
        except (ValueError, TypeError, msgspec.ValidationError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return JSONResponse(msgspec.to_builtins(result) if result is not None else {"ok": True})

    async def _http_put_pool(self, request: Request) -> Response:
        p = request.path_params
        try:
            body = await self._json(request)
        except msgspec.DecodeError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        members = body.get("members", []) if isinstance(body, dict) else None
        if not isinstance(members, list):
            return JSONResponse({"error": "body must be {\"members\": [...]}"}, status_code=400)
        return await self._control(lambda: self.set_pool(p["name"], members, p["partition"]))

    async def _http_delete_pool(self, request: Request) -> Response:
        p = request.path_params
        return await self._control(lambda: self.delete_pool(p["name"], p["partition"]))

    async def _http_add_member(self, request: Request) -> Response:
        p = request.path_params
        try:
            body = await self._json(request)
        except msgspec.DecodeError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        member = body.get("member") if isinstance(body, dict) else None
        if not isinstance(member, str | dict):
            return JSONResponse({"error": "body must be {\"member\": spec or object}"},
                                status_code=400)
        return await self._control(lambda: self.add_member(p["name"], member, p["partition"]))

    async def _http_patch_member(self, request: Request) -> Response:
        p = request.path_params
        try:
            patch = msgspec.json.decode(await request.body() or b"{}", type=_MemberPatch)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return await self._control(lambda: self.set_member(
            p["name"], p["member"], state=patch.state, session=patch.session,
            partition=p["partition"]))

    async def _http_remove_member(self, request: Request) -> Response:
        p = request.path_params
        return await self._control(
            lambda: self.remove_member(p["name"], p["member"], p["partition"]))

    async def _http_inject_fault(self, request: Request) -> Response:
        try:
            req = msgspec.json.decode(await request.body(), type=_FaultRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return await self._control(lambda: self.inject_fault(
            req.kind, req.count, delay=req.delay, path_prefix=req.path_prefix))

    async def _http_clear_faults(self, request: Request) -> Response:
        return await self._control(self.clear_faults)

    async def _http_expire_tokens(self, request: Request) -> Response:
        return await self._control(self.expire_tokens)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m services.doubles.f5_emulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m services.doubles.f5_emulator",
        description="Emulated F5 BIG-IP iControl REST (pools, members, token auth, faults).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool", action="append", default=[], metavar="[PART/]NAME=M1,M2",
                        help="a pool and its members (repeatable), e.g. "
                             "Common/demo-pool=127.0.0.1:9001,127.0.0.1:9002")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-env", default="F5_PASSWORD",
                        help="environment variable holding the user's password")
    parser.add_argument("--token-lifetime", type=float, default=1200.0)
    parser.add_argument("--log-level", type=str.upper, default="INFO", choices=LOG_LEVELS)
    return parser


def build_emulator(args: argparse.Namespace) -> F5Emulator:
    """An emulator configured from parsed command-line options."""
    password = os.environ.get(args.password_env, "")
    if not password:
        raise ValueError(f"environment variable {args.password_env} is empty or unset")
    emulator = F5Emulator(users={args.user: password}, token_lifetime=args.token_lifetime)
    for text in args.pool:
        partition, name, members = parse_pool_arg(text)
        emulator.set_pool(name, members, partition)
    return emulator


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        emulator = build_emulator(args)
    except ValueError as err:
        parser.error(str(err))
    setup_logging("f5-emulator", args.log_level)
    log.info("F5 emulator starting on %s:%d (%d pools, user %s)", args.host, args.port,
             len(args.pool), args.user)
    uvicorn.run(emulator, host=args.host, port=args.port, log_config=None, log_level="warning",
                access_log=False, timeout_graceful_shutdown=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
