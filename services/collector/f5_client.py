"""Async iControl REST client: token auth (basic fallback), pools and pool members."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import msgspec

from services.collector.f5_parse import (
    F5Error,
    F5PayloadError,
    LoginToken,
    is_not_registered,
    is_pool_not_found,
    list_pool_names,
    parse_error_body,
    parse_login,
    parse_members,
)
from shared.config import F5Config
from shared.members import url_host
from shared.messages import MemberInfo

log = logging.getLogger("llmsched.collector.f5")

LOGIN_PATH = "/mgmt/shared/authn/login"
TOKENS_PATH = "/mgmt/shared/authz/tokens/"
POOL_PATH = "/mgmt/tm/ltm/pool"
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class F5TransientError(F5Error):
    """F5 cannot answer right now (mcpd/restjavad restarting, 5xx, timeout, connection)."""


class F5PoolNotFound(F5Error):
    """The pool does not exist on the BIG-IP (``01020036:3``); retrying will not help."""


class F5AuthError(F5Error):
    """F5 refused the credentials (after a fresh login, or with basic auth)."""


class F5RequestError(F5Error):
    """Any other unexpected status."""


def tilde_path(partition: str, name: str) -> str:
    """``("Common", "pool1")`` → ``~Common~pool1``; folders in ``name`` become more ``~``."""
    parts = [p for p in f"{partition}/{name}".split("/") if p]
    # quote() never escapes "~", but a literal "~" would be read as a separator.
    return "".join("~" + quote(p, safe="-._").replace("~", "%7E") for p in parts)


def http_client_for(config: F5Config) -> httpx.AsyncClient:
    """An httpx client with the F5 section's TLS and timeout settings (caller closes it)."""
    verify: bool | ssl.SSLContext = config.verify if isinstance(config.verify, bool) else (
        ssl.create_default_context(capath=config.verify) if os.path.isdir(config.verify)
        else ssl.create_default_context(cafile=config.verify)
    )
    return httpx.AsyncClient(verify=verify, timeout=config.timeout)


class F5Client:
    """iControl REST over an injected ``httpx.AsyncClient``."""

    def __init__(
        self,
        config: F5Config,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._http = http
        self._clock = clock
        host = config.host.strip("[]")
        self.base_url = f"{config.scheme}://{url_host(host)}:{config.port}"
        self._token: str | None = None
        self._token_valid_until = 0.0
        self._basic_fallback = False
        self._login_lock = asyncio.Lock()

    @property
    def auth_mode(self) -> str:
        """``token`` or ``basic`` (configured, or fallen back to after a refused login)."""
        return "basic" if self._uses_basic() else "token"

    async def get_members(self, pool: str, partition: str = "Common") -> list[MemberInfo]:
        """The pool's members as the gateway knows them."""
        path = f"{POOL_PATH}/{tilde_path(partition, pool)}/members"
        try:
            payload = await self._get_json(path)
        except _NotFound as err:
            if is_pool_not_found(err.message):
                raise F5PoolNotFound(f"pool /{partition}/{pool} not found: {err.message}") from None
            raise F5TransientError(f"GET {path}: 404 {err.message}") from None
        return parse_members(payload)

    async def list_pools(self, partition: str = "Common") -> list[str]:
        """Names of the pools in ``partition``."""
        query = "$filter=partition+eq+" + quote(partition, safe="-._")
        try:
            payload = await self._get_json(POOL_PATH, query)
        except _NotFound as err:
            raise F5TransientError(f"GET {POOL_PATH}: 404 {err.message}") from None
        return list_pool_names(payload, partition)

    async def close(self) -> None:
        """Delete the token on the BIG-IP (errors ignored; tokens expire anyway)."""
        token, self._token = self._token, None
        if token is None:
            return
        try:
            await self._http.delete(
                self._url(TOKENS_PATH + quote(token, safe="")),
                headers={"X-F5-Auth-Token": token},
                timeout=self._config.timeout,
            )
        except (httpx.HTTPError, RuntimeError) as err:  # RuntimeError: http already closed
            log.debug("token logout failed: %s", type(err).__name__)

    # -- requests ---------------------------------------------------------------------------

    def _url(self, path: str, query: str = "") -> str:
        return f"{self.base_url}{path}?{query}" if query else f"{self.base_url}{path}"

    def _uses_basic(self) -> bool:
        return self._config.auth == "basic" or self._basic_fallback

    def _scrub(self, text: str) -> str:
        password = self._config.password()
        return text.replace(password, "***") if password else text

    async def _get_json(self, path: str, query: str = "") -> Any:
        response = await self._authorized("GET", path, query)
        if response.status_code == 200:
            try:
                return msgspec.json.decode(response.content)
            except msgspec.DecodeError:
                raise F5PayloadError(f"GET {path}: 200 but the body is not JSON") from None
        self._raise_for(response, f"GET {path}")

    async def _authorized(self, method: str, path: str, query: str) -> httpx.Response:
        headers = await self._auth_headers(stale_token=None)
        response = await self._send(method, path, query, headers)
        if response.status_code != 401:
            return response
        if self._uses_basic():
            if self._config.auth != "basic":
                self._basic_fallback = False  # try token login again next time
            raise F5AuthError(self._auth_message(response, "basic auth"))
        log.info("F5 answered 401 (%s); logging in again", self._error_text(response))
        headers = await self._auth_headers(stale_token=headers.get("X-F5-Auth-Token"))
        response = await self._send(method, path, query, headers)
        if response.status_code == 401:
            raise F5AuthError(self._auth_message(response, "a fresh token"))
        return response

    async def _send(
        self, method: str, path: str, query: str, headers: dict[str, str]
    ) -> httpx.Response:
        url = self._url(path, query)
        try:
            return await self._http.request(
                method, url, headers=headers, timeout=self._config.timeout
            )
        except httpx.TimeoutException:
            raise F5TransientError(
                f"{method} {path}: no answer within {self._config.timeout}s"
            ) from None
        except httpx.HTTPError as err:
            raise F5TransientError(f"{method} {path}: {type(err).__name__}: {err}") from None

    def _error_text(self, response: httpx.Response) -> str:
        return self._scrub(parse_error_body(response.text).message)

    def _auth_message(self, response: httpx.Response, how: str) -> str:
        return (
            f"F5 refused user {self._config.username!r} with {how}: "
            f"{response.status_code} {self._error_text(response)}"
        )

    def _raise_for(self, response: httpx.Response, what: str) -> NoReturn:
        status = response.status_code
        message = self._error_text(response)
        if status == 404:
            raise _NotFound(message)
        if status in TRANSIENT_STATUSES or status >= 500:
            raise F5TransientError(f"{what}: {status} {message}")
        if status == 403:
            raise F5AuthError(f"{what}: 403 {message}")
        raise F5RequestError(f"{what}: {status} {message}")

    # -- authentication ---------------------------------------------------------------------

    async def _auth_headers(self, stale_token: str | None) -> dict[str, str]:
        if not self._uses_basic():
            token = await self._valid_token(stale_token)
            if token is not None:
                return {"X-F5-Auth-Token": token}
        pair = f"{self._config.username}:{self._config.password()}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}

    async def _valid_token(self, stale_token: str | None) -> str | None:
        async with self._login_lock:
            usable = self._token is not None and self._clock() < self._token_valid_until
            # Another task may have logged in while this one waited on the lock.
            if usable and self._token != stale_token:
                return self._token
            login = await self._login()
            if login is None:
                return None
            self._token = login.token
            margin = min(60.0, login.timeout / 10)
            self._token_valid_until = self._clock() + login.timeout - margin
            return self._token

    async def _login(self) -> LoginToken | None:
        body = {
            "username": self._config.username,
            "password": self._config.password(),
            "loginProviderName": self._config.login_provider,
        }
        url = self._url(LOGIN_PATH)
        try:
            response = await self._http.post(url, json=body, timeout=self._config.timeout)
        except httpx.TimeoutException:
            raise F5TransientError(f"login: no answer within {self._config.timeout}s") from None
        except httpx.HTTPError as err:
            raise F5TransientError(f"login: {type(err).__name__}: {err}") from None
        status = response.status_code
        if status == 200:
            try:
                login = parse_login(msgspec.json.decode(response.content))
            except msgspec.DecodeError:
                raise F5PayloadError("login: 200 but the body is not JSON") from None
            log.debug("logged in to %s as %r (token timeout %ss)",
                      self.base_url, self._config.username, login.timeout)
            return login
        message = self._error_text(response)
        if status in (401, 404) and not is_not_registered(message):
            # Older releases and some AAA set-ups refuse token login but take basic auth.
            log.warning("token login refused (%s %s); using basic auth", status, message)
            self._basic_fallback = True
            return None
        if status == 404 or status in TRANSIENT_STATUSES or status >= 500:
            raise F5TransientError(f"login: {status} {message}")
        raise F5AuthError(f"login as {self._config.username!r}: {status} {message}")


class _NotFound(Exception):
    """A 404; the caller decides what it means for its path."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
