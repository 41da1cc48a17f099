"""Every NATS subject and Redis key name, under one configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass

MODELS_PARTITION = "@models"
"""Partition of the implicit pools of registered aliases (no F5 partition contains '@')."""

_ESCAPES = {"%": "%25", ".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09"}


def token(value: str) -> str:
    """Escape a pool or partition name so it is a single, literal NATS subject token."""
    if not value:
        return "%00"
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


@dataclass(frozen=True)
class Subjects:
    """Subject names for one deployment; two prefixes never see each other's traffic."""

    prefix: str = "llmsched"

    def pool_snapshot(self, partition: str, pool: str) -> str:
        return f"{self.prefix}.pool.snapshot.{token(partition)}.{token(pool)}"

    @property
    def pool_snapshot_all(self) -> str:
        return f"{self.prefix}.pool.snapshot.>"

    @property
    def pool_resync(self) -> str:
        """A scheduler replica joined (or reconnected): collectors republish their pools."""
        return f"{self.prefix}.pool.resync"

    def member_metrics(self, partition: str, pool: str) -> str:
        return f"{self.prefix}.member.metrics.{token(partition)}.{token(pool)}"

    @property
    def member_metrics_all(self) -> str:
        return f"{self.prefix}.member.metrics.>"

    def load(self, name: str) -> str:
        return f"{self.prefix}.load.{token(name)}"

    @property
    def load_all(self) -> str:
        return f"{self.prefix}.load.>"

    @property
    def autoscaler_action(self) -> str:
        return f"{self.prefix}.autoscaler.action"

    @property
    def request_outcome(self) -> str:
        return f"{self.prefix}.request.outcome"

    @property
    def selection(self) -> str:
        """Every routed request, so all scheduler replicas count it as in flight."""
        return f"{self.prefix}.selection"

    @property
    def registry_changed(self) -> str:
        """A model, worker or instance changed in the registry (re-read Redis now)."""
        return f"{self.prefix}.registry.changed"

    @property
    def autoscaler_demand(self) -> str:
        """A gateway holds requests for an alias with nothing awake (scale from zero)."""
        return f"{self.prefix}.autoscaler.demand"

    @property
    def route(self) -> str:
        return self.scheduler_endpoint("route")

    @property
    def route_many(self) -> str:
        """Several route calls in one request (a JSON array in, one out)."""
        return self.scheduler_endpoint("route_many")

    @property
    def select_many(self) -> str:
        """Several select calls in one request (a JSON array in, one out)."""
        return self.scheduler_endpoint("select_many")

    @property
    def records(self) -> str:
        return self.scheduler_endpoint("records")

    @property
    def scheduler_service(self) -> str:
        """The nats.micro service name (letters, digits, dashes and underscores only)."""
        return f"{self.prefix}-scheduler"

    @property
    def scheduler_group(self) -> str:
        """Subject prefix of the scheduler's micro endpoints."""
        return f"{self.prefix}.scheduler"

    @property
    def scheduler_queue(self) -> str:
        return f"{self.prefix}-scheduler"

    def scheduler_endpoint(self, name: str) -> str:
        return f"{self.scheduler_group}.{name}"

    @property
    def select(self) -> str:
        return self.scheduler_endpoint("select")

    @property
    def simulate(self) -> str:
        return self.scheduler_endpoint("simulate")

    @property
    def analyze(self) -> str:
        return self.scheduler_endpoint("analyze")

    @property
    def status(self) -> str:
        return self.scheduler_endpoint("status")


@dataclass(frozen=True)
class RedisKeys:
    """Redis key names for one deployment."""

    prefix: str = "llmsched"

    def snapshot(self, partition: str, pool: str) -> str:
        return f"{self.prefix}:snapshot:{partition}/{pool}"

    @property
    def snapshot_pattern(self) -> str:
        return f"{self.prefix}:snapshot:*"

    def metrics(self, partition: str, pool: str) -> str:
        return f"{self.prefix}:metrics:{partition}/{pool}"

    @property
    def metrics_pattern(self) -> str:
        return f"{self.prefix}:metrics:*"

    def selections(self, partition: str, pool: str) -> str:
        """Hash of a pool's fleet-wide answer counts (field: member key, none, fallback)."""
        return f"{self.prefix}:selections:{partition}/{pool}"
