"""Carry a placement out make-before-break, one idempotent pass at a time.

The desired placement says which servers hold which shards. Each pass compares it with what the
servers' assignments say and what their agents report loaded, and returns the actions that move
the fleet one safe step closer:

1. create servers the placement names that have no pod;
2. add the shards a server must newly hold to its assignment (with every resident version);
3. keep a shard on a server it is leaving, marked ``drain``, until every replica the placement
   wants for it is loaded and served elsewhere; only then drop it;
4. delete a server the placement no longer uses once it holds nothing.

No step removes a serving replica before its replacement is ready, so a re-plan never takes a
shard below its ready replicas. Any pass may be cut off and re-run: the result depends only on
the observation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ekko.api.resources import AssignedShard, Model
from ekko.api.units import quantity_bytes
from ekko.planning.state import PoolState, ReplicaKey, ServerObs, ShardKey


@dataclass(frozen=True)
class Desired:
    """Where every shard should be: server -> shards, and each server's zone."""

    servers: Mapping[str, frozenset[ShardKey]]
    zones: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateServer:
    """Create a server pod (and its empty assignment) in a zone."""

    name: str
    zone: str


@dataclass(frozen=True)
class WriteAssignment:
    """Replace a server's assigned shards."""

    server: str
    zone: str
    shards: tuple[AssignedShard, ...]
    new: bool = False
    """No assignment was observed: create it (a patch first would fail, one request more for
    each of a new fleet's servers)."""


@dataclass(frozen=True)
class DeleteServer:
    """Delete an empty server's pod and assignment."""

    name: str


@dataclass(frozen=True)
class RecreateServer:
    """Delete a failed or orphaned server pod so it is created again in the same zone."""

    name: str


Action = CreateServer | WriteAssignment | DeleteServer | RecreateServer


def converge(state: PoolState, desired: Desired) -> list[Action]:
    """The next safe actions that move the pool toward ``desired``."""
    models = {m.metadata.name: m for m in state.models}
    wanted = _wanted_replicas(desired)
    ready = _ready_replicas(state, desired)
    # Once per pass, not per server (a dict of every model per server, and a quantity parsed per
    # replica, were most of a converged pass at 600 servers).
    resident: dict[str, dict[str, str]] = {
        name: {v.version: v.uri for v in state.versions(model)} for name, model in models.items()
    }
    sizes = _SizeOf(models)
    actions: list[Action] = []
    # minServers: empty servers beyond the plan are kept (never created ahead of need) up to it.
    spare = max(0, state.pool.spec.min_servers - len(desired.servers))
    for name in sorted(desired.servers):
        server = state.server(name)
        zone = desired.zones.get(name, server.zone if server else "")
        if server is None or not server.pod_exists:
            actions.append(CreateServer(name, zone))
        elif server.pod_failed and not server.deleting:
            actions.append(RecreateServer(name))
    for server in state.servers:
        target = desired.servers.get(server.name, frozenset())
        shards = _next_spec(
            server, target, resident=resident, sizes=sizes, wanted=wanted, ready=ready
        )
        changed = shards != server.spec_shards or not server.assignment_exists
        if changed and (server.assignment_exists or shards):
            zone = desired.zones.get(server.name, server.zone)
            actions.append(
                WriteAssignment(server.name, zone, shards, new=not server.assignment_exists)
            )
        if (
            server.name not in desired.servers
            and not shards
            and (not server.loaded or not server.serving)
            and not server.deleting
            and server.pod_exists
        ):
            if spare > 0 and server.alive:
                spare -= 1
            else:
                actions.append(DeleteServer(server.name))
    for name in sorted(desired.servers):
        if state.server(name) is None:
            zone = desired.zones.get(name, "")
            shards = _next_spec(
                ServerObs(name, zone, pod_exists=False),
                desired.servers[name],
                resident=resident,
                sizes=sizes,
                wanted=wanted,
                ready=ready,
            )
            actions.append(WriteAssignment(name, zone, shards, new=True))
    return actions


def _wanted_replicas(desired: Desired) -> Counter[ShardKey]:
    wanted: Counter[ShardKey] = Counter()
    for shards in desired.servers.values():
        wanted.update(shards)
    return wanted


def _ready_replicas(state: PoolState, desired: Desired) -> Counter[ReplicaKey]:
    """Replicas loaded and served on servers where the placement wants them."""
    ready: Counter[ReplicaKey] = Counter()
    for server in state.servers:
        if not server.serving:
            continue
        target = desired.servers.get(server.name, frozenset())
        ready.update(key for key in server.loaded if (key[0], key[1]) in target)
    return ready


class _SizeOf:
    """Bytes of a model's shard, each size parsed once per pass."""

    def __init__(self, models: Mapping[str, Model]) -> None:
        self.models = models
        self._known: dict[tuple[str, int], int] = {}

    def __call__(self, model_name: str, index: int) -> int:
        model = self.models[model_name]
        # Shards of one size share an entry (index -1); listed shards have one each.
        key = (model_name, index if model.spec.shards.items is not None else -1)
        size = self._known.get(key)
        if size is None:
            size = self._known[key] = _shard_bytes(model, index)
        return size


def _next_spec(
    server: ServerObs,
    target: frozenset[ShardKey],
    *,
    resident: Mapping[str, Mapping[str, str]],
    sizes: _SizeOf,
    wanted: Counter[ShardKey],
    ready: Counter[ReplicaKey],
) -> tuple[AssignedShard, ...]:
    entries: dict[ReplicaKey, AssignedShard] = {}
    held = {(s.model, s.shard, s.version): s for s in server.spec_shards}
    for model_name, index in sorted(target):
        if model_name not in resident:
            continue
        for version, uri in resident[model_name].items():
            key = (model_name, index, version)
            size = sizes(model_name, index)
            same = held.get(key)
            if same is not None and same.uri == uri and same.bytes == size and not same.drain:
                entries[key] = same  # what the assignment says already: no new object
                continue
            entries[key] = AssignedShard(
                model=model_name, shard=index, version=version, uri=uri, bytes=size
            )
    for old in server.spec_shards:
        key = (old.model, old.shard, old.version)
        if key in entries:
            continue
        still_wanted = (
            old.model in resident
            and old.version in resident[old.model]
            and wanted[(old.model, old.shard)] > 0
        )
        if not still_wanted:
            continue  # model deleted, version retired or shard gone: nothing to keep serving
        if ready[key] >= wanted[(old.model, old.shard)]:
            continue  # every replica the placement wants is loaded elsewhere: drop this one
        if old.model in resident and server.alive:
            entries[key] = old.evolve(drain=True)
    return tuple(entries[k] for k in sorted(entries))


def _shard_bytes(model: Model, index: int) -> int:
    shards = model.spec.shards
    if shards.items is not None:
        return quantity_bytes(shards.items[index].size)
    assert shards.size is not None
    return quantity_bytes(shards.size)
