"""Typed placement problem and plan.

These types are the solver's whole interface: the operator (``ekko.planning``) and the CLI build a
:class:`Problem`, every solver returns a :class:`Plan`, and the checker compares the two.  They are
frozen so a plan handed to the operator cannot be edited after it was checked.
"""

from __future__ import annotations

import math
from typing import Literal, NewType

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ekko.api.resources import MAX_ASSIGNED_SHARDS

ModelId = NewType("ModelId", str)
ServerId = NewType("ServerId", str)
ZoneId = NewType("ZoneId", str)
SloClassName = NewType("SloClassName", str)

PlanStatus = Literal["optimal", "feasible", "fallback", "infeasible"]
"""optimal: proven optimal; feasible: valid, not proven optimal; fallback: the deadline passed or the
optimiser failed and the plan is the current placement or a greedy one; infeasible: no valid plan
exists or none was found, see ``Plan.explanation``."""

GIB = 1024**3

# Shard replica placement: model -> shard index -> servers holding one replica each.
Assignment = dict[ModelId, tuple[tuple[ServerId, ...], ...]]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SloClass(_Frozen):
    """A service-level class: a utilisation cap and the classes it never shares a server with."""

    name: SloClassName = Field(description="Class name, e.g. critical, standard, batch.")
    utilisation_cap: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Highest compute utilisation of any server that holds a shard of this class.",
    )
    exclusive_with: tuple[SloClassName, ...] = Field(
        default=(),
        description="Classes that never share a server with this one (the rule is symmetric).",
    )


DEFAULT_SLO_CLASSES: tuple[SloClass, ...] = (
    SloClass(
        name=SloClassName("critical"),
        utilisation_cap=0.6,
        exclusive_with=(SloClassName("batch"),),
    ),
    SloClass(name=SloClassName("standard"), utilisation_cap=0.8),
    SloClass(
        name=SloClassName("batch"),
        utilisation_cap=1.0,
        exclusive_with=(SloClassName("critical"),),
    ),
)


class Server(_Frozen):
    """One server of the pool, existing or to be created."""

    id: ServerId = Field(description="Server (pod) name.")
    zone: ZoneId = Field(default=ZoneId(""), description="Topology domain; '' when none.")


class Pool(_Frozen):
    """A fleet of identical servers."""

    name: str = Field(description="Pool name, used in messages and for new server names.")
    memory_bytes: int = Field(gt=0, description="Memory per server available for shards.")
    compute_units: float = Field(
        gt=0, allow_inf_nan=False, description="Compute per server (QPS, cores, ...)."
    )
    headroom: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of memory and compute kept free on every server.",
    )
    max_servers: int = Field(gt=0, description="Most servers the pool may use.")
    max_shards_per_server: int = Field(
        default=MAX_ASSIGNED_SHARDS,
        gt=0,
        le=MAX_ASSIGNED_SHARDS,
        description="Most entries (shard replicas times versions held) one server's "
        "ServerAssignment may list.",
    )
    zones: tuple[ZoneId, ...] = Field(
        default=(),
        description="Topology domains new servers can be created in; replicas are spread over "
        "them. Empty: no spreading.",
    )
    servers: tuple[Server, ...] = Field(default=(), description="Servers that exist now.")

    def usable_memory(self) -> float:
        """Memory per server after headroom."""
        return self.memory_bytes * (1.0 - self.headroom)

    def usable_compute(self, cap: float = 1.0) -> float:
        """Compute per server after headroom and a utilisation cap (the stricter applies)."""
        return self.compute_units * min(1.0 - self.headroom, cap)


class ModelSpec(_Frozen):
    """A model's shards, replicas, load and SLO class."""

    id: ModelId = Field(description="Model name, unique in the problem.")
    shard_count: int | None = Field(default=None, ge=1, description="Shards of equal size.")
    shard_bytes: int | None = Field(default=None, gt=0, description="Size of each equal shard.")
    shard_sizes: tuple[int, ...] | None = Field(
        default=None, description="Explicit shard sizes in bytes (instead of count x size)."
    )
    shard_loads: tuple[float, ...] | None = Field(
        default=None, description="Explicit per-replica load of each shard (defaults to load)."
    )
    replicas: int = Field(default=1, ge=1, description="Replicas of every shard.")
    load: float = Field(
        default=0.0, ge=0.0, allow_inf_nan=False, description="Compute units per shard replica."
    )
    slo: SloClassName = Field(default=SloClassName("standard"), description="SLO class name.")
    reserve_factor: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Extra memory per replica as a fraction of the shard size, for the resident "
        "previous version and the canary (1.0 = one extra copy).",
    )
    reserve_bytes: int = Field(default=0, ge=0, description="Extra bytes per shard replica.")
    versions_held: int = Field(
        default=1,
        ge=1,
        description="Versions a server holds of each of the model's shard replicas (2 while a "
        "canary or the previous version is resident): each is one entry of the server's "
        "ServerAssignment, so a replica counts this many times against max_shards_per_server.",
    )

    @model_validator(mode="after")
    def _check_shards(self) -> ModelSpec:
        if self.shard_sizes is None:
            if self.shard_count is None or self.shard_bytes is None:
                raise ValueError(
                    f"model {self.id}: give shard_count and shard_bytes, or shard_sizes"
                )
        else:
            if self.shard_count is not None and self.shard_count != len(self.shard_sizes):
                raise ValueError(f"model {self.id}: shard_count differs from len(shard_sizes)")
            if not self.shard_sizes or min(self.shard_sizes) <= 0:
                raise ValueError(f"model {self.id}: shard_sizes must be non-empty and positive")
        if self.shard_loads is not None:
            if len(self.shard_loads) != self.num_shards:
                raise ValueError(f"model {self.id}: shard_loads must have one entry per shard")
            if not all(math.isfinite(x) and x >= 0 for x in self.shard_loads):
                raise ValueError(f"model {self.id}: shard_loads must be finite and not negative")
        return self

    @property
    def num_shards(self) -> int:
        if self.shard_sizes is not None:
            return len(self.shard_sizes)
        assert self.shard_count is not None
        return self.shard_count

    def size_of(self, shard: int) -> int:
        """Bytes of one shard (without reserve)."""
        if self.shard_sizes is not None:
            return self.shard_sizes[shard]
        assert self.shard_bytes is not None
        return self.shard_bytes

    def memory_of(self, shard: int) -> int:
        """Bytes one replica of the shard occupies, reserve included."""
        return math.ceil(self.size_of(shard) * (1.0 + self.reserve_factor)) + self.reserve_bytes

    def load_of(self, shard: int) -> float:
        if self.shard_loads is not None:
            return self.shard_loads[shard]
        return self.load


class Problem(_Frozen):
    """One pool, the models placed on it, the SLO classes and the current placement."""

    pool: Pool
    models: tuple[ModelSpec, ...]
    slo_classes: tuple[SloClass, ...] = DEFAULT_SLO_CLASSES
    current: Assignment = Field(
        default_factory=dict,
        description="Current placement: model -> shard index -> servers holding a replica. "
        "May be stale (unknown servers, changed shard counts); the solver ignores what no "
        "longer applies.",
    )

    @model_validator(mode="after")
    def _check_ids(self) -> Problem:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids must be unique")
        sids = [s.id for s in self.pool.servers]
        if len(set(sids)) != len(sids):
            raise ValueError("server ids must be unique")
        classes = {c.name for c in self.slo_classes}
        if len(classes) != len(self.slo_classes):
            raise ValueError("SLO class names must be unique")
        for c in self.slo_classes:
            for other in c.exclusive_with:
                if other not in classes:
                    raise ValueError(f"SLO class {c.name}: unknown class {other} in exclusive_with")
        for m in self.models:
            if m.slo not in classes:
                raise ValueError(f"model {m.id}: unknown SLO class {m.slo}")
        zones = set(self.pool.zones)
        for s in self.pool.servers:
            if zones and s.zone not in zones:
                raise ValueError(f"server {s.id}: zone {s.zone!r} is not one of the pool's zones")
        return self

    def slo(self, name: SloClassName) -> SloClass:
        for c in self.slo_classes:
            if c.name == name:
                return c
        raise KeyError(name)

    def exclusive(self, a: SloClassName, b: SloClassName) -> bool:
        """Whether classes a and b may not share a server (either side may declare it)."""
        return b in self.slo(a).exclusive_with or a in self.slo(b).exclusive_with

    def spread_cap(self, replicas: int) -> int:
        """Most replicas of one shard allowed in one zone."""
        k = len(self.pool.zones)
        if k <= 1:
            return replicas
        return math.ceil(replicas / k)

    @property
    def total_replicas(self) -> int:
        return sum(m.num_shards * m.replicas for m in self.models)


class SolveConfig(_Frozen):
    """Knobs of :func:`ekko.solver.solve`."""

    time_limit: float = Field(default=10.0, gt=0, description="Hard deadline in seconds.")
    num_workers: int = Field(default=2, ge=1, description="CP-SAT search workers.")
    relative_gap_limit: float = Field(default=0.0, ge=0, description="Stop at this gap.")
    group_size: int = Field(
        default=2000, ge=50, description="Shard replicas per group in the decomposition."
    )
    migration_weight: float = Field(
        default=0.5,
        ge=0,
        description="Cost of moving one server's worth of bytes, in servers.",
    )
    backend: Literal["cpsat", "highs"] = Field(default="cpsat", description="MIP backend.")
    lns: bool = Field(default=True, description="Improve with large-neighbourhood search.")
    seed: int = Field(default=0, description="Random seed (LNS neighbourhoods, CP-SAT).")
    log: bool = Field(default=False, description="Log the backend's search progress.")


class Violation(_Frozen):
    """One broken rule found by the checker."""

    kind: Literal[
        "replicas",
        "distinct",
        "unknown-model",
        "unknown-server",
        "memory",
        "compute",
        "colocation",
        "spread",
        "max-servers",
        "zone",
        "shards-per-server",
    ]
    message: str


class Plan(_Frozen):
    """A placement: every shard replica's server, with status, cost and bounds."""

    solver: str = Field(description="Name of the solver that made the plan.")
    status: PlanStatus
    assignment: Assignment = Field(
        default_factory=dict, description="model -> shard index -> servers (one per replica)."
    )
    servers: tuple[Server, ...] = Field(default=(), description="Servers the plan uses.")
    new_servers: tuple[ServerId, ...] = Field(
        default=(), description="Servers of the plan that do not exist yet."
    )
    objective: float = Field(default=math.inf, description="Servers + migration cost.")
    lower_bound: int = Field(default=0, description="Proven lower bound on servers.")
    gap: float = Field(default=math.inf, description="(servers - bound) / servers.")
    solve_seconds: float = 0.0
    bytes_moved: int = Field(default=0, description="Bytes loaded onto servers that lacked them.")
    replicas_moved: int = Field(default=0, description="Shard replicas loaded anew.")
    explanation: tuple[str, ...] = Field(
        default=(), description="Why no plan exists, in actionable words (infeasible only)."
    )
    notes: tuple[str, ...] = Field(default=(), description="How the plan was found.")

    @property
    def servers_used(self) -> int:
        return len(self.servers)
