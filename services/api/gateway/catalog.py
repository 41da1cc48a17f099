"""Which model names the gateway serves, and where each one's requests go."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from services.api.gateway.proxy import Target
from shared.config import Config
from shared.subjects import MODELS_PARTITION


class RegisteredModel(Protocol):
    """What the catalog reads of a registry entry."""

    @property
    def alias(self) -> str: ...

    @property
    def model_name(self) -> str: ...

    @property
    def registered_at(self) -> float: ...


class Catalog:
    """Registered aliases (their instances form a pool) plus configured pools named by model.

    A configured pool (``pools[].model``) wins over a registered alias of the same name:
    the operator's file is explicit.
    """

    def __init__(self, config: Config,
                 registered: Callable[[], Mapping[str, RegisteredModel]]) -> None:
        self._registered = registered
        self._configured: dict[str, Target] = {}
        self.set_config(config)

    def set_config(self, config: Config) -> None:
        """Rebuild the configured aliases (hot reload)."""
        configured: dict[str, Target] = {}
        for pool in config.pools:
            if pool.pd_pool is not None:  # a role pool: the alias names the PD pool
                configured.setdefault(pool.model or pool.pd_pool, Target(
                    alias=pool.model or pool.pd_pool, pool=pool.pd_pool,
                    partition=pool.partition, managed=False,
                    served_model=pool.served_model_name, pd=True,
                    pd_retries=pool.pd.max_retries))
                continue
            managed = config.pool_source(pool) == "workers"
            alias = pool.model or (pool.name if managed else None)
            if alias is None:
                continue
            configured.setdefault(alias, Target(
                alias=alias, pool=pool.name, partition=pool.partition, managed=managed,
                served_model=pool.served_model_name))
        self._configured = configured

    def resolve(self, model: str) -> Target | None:
        """The target of ``model`` (an alias), or None when nothing serves it."""
        target = self._configured.get(model)
        if target is not None:
            return target
        if model in self._registered():
            return Target(alias=model, pool=model, partition=MODELS_PARTITION, managed=True)
        return None

    def models_list(self) -> dict[str, Any]:
        """``GET /v1/models``: every alias, in OpenAI's list shape."""
        data: dict[str, dict[str, Any]] = {}
        for alias, entry in sorted(self._registered().items()):
            data[alias] = {"id": alias, "object": "model", "created": int(entry.registered_at),
                           "owned_by": "llmsched", "root": entry.model_name or alias,
                           "parent": None}
        for alias, target in sorted(self._configured.items()):
            data.setdefault(alias, {"id": alias, "object": "model", "created": 0,
                                    "owned_by": "llmsched", "root": target.served_model or alias,
                                    "parent": None})
        return {"object": "list", "data": list(data.values())}
