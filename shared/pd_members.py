"""Who the members of a PD pool are: the file's, the admin API's and the workers' (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from shared.config import PoolConfig
from shared.members import member_key, parse_member_key
from shared.pd_config import ROLES, entry_address, entry_id
from shared.pd_registry import MemberRole, MemberState, Origin, PDMemberRecord


@dataclass(frozen=True, slots=True)
class PDMember:
    """One member of a PD pool and its run-time state."""

    id: str
    role: MemberRole
    """prefill, decode, or both (a worker instance started without a role)."""
    host: str
    port: int
    origin: Origin
    state: MemberState = "active"
    drain_started: float | None = None
    drain_deadline: float | None = None

    @property
    def key(self) -> str:
        return member_key(self.host, self.port)

    def serves(self, role: str) -> bool:
        return self.role in (role, "both")


@dataclass(frozen=True, slots=True)
class WorkerMember:
    """An instance of the pool's alias on an active worker."""

    id: str
    role: MemberRole
    host: str
    port: int
    state: MemberState = "active"


def members_of(pool: PoolConfig, records: Mapping[str, PDMemberRecord],
               instances: Iterable[WorkerMember] = ()) -> list[PDMember]:
    """The pool's members, by id: the file's and the workers', overridden by records.

    A record from the admin API adds (or replaces) a member; a record of a file or worker
    member only carries its state (draining, removed). Removed members are left out.
    """
    found: dict[str, PDMember] = {}
    if pool.roles is not None:
        for role in ROLES:
            for entry in getattr(pool.roles, role):
                host, port = parse_member_key(entry_address(entry))
                found[entry_id(entry)] = PDMember(entry_id(entry), role, host.strip("[]"),
                                                  port, "config")
    for inst in instances:
        found[inst.id] = PDMember(inst.id, inst.role, inst.host, inst.port, "worker",
                                  inst.state)
    for record in records.values():
        if record.origin == "api":
            found[record.id] = PDMember(record.id, record.role, record.host, record.port, "api",
                                        record.state, record.drain_started,
                                        record.drain_deadline)
            continue
        base = found.get(record.id)
        if base is not None:  # a record of a member that left the file/worker is moot
            found[record.id] = replace(base, state=record.state,
                                       drain_started=record.drain_started,
                                       drain_deadline=record.drain_deadline)
    return [m for m in found.values() if m.state != "removed"]
