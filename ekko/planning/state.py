"""What the operator observed about one pool, as plain frozen values.

``ekko.kube`` builds these from the API objects; the planning functions read only these, so they
can be table-tested without a cluster.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

from ekko.api.resources import AssignedShard, Model, ModelVersion, ServerPool

ShardKey = tuple[str, int]
"""(model, shard index)"""
ReplicaKey = tuple[str, int, str]
"""(model, shard index, version)"""


@dataclass(frozen=True)
class ServerObs:
    """One server: its pod and its assignment, as last seen."""

    name: str
    zone: str = ""
    pod_exists: bool = True
    pod_ready: bool = False
    pod_failed: bool = False
    deleting: bool = False
    node: str | None = None
    assignment_exists: bool = True
    spec_shards: tuple[AssignedShard, ...] = ()
    loaded: frozenset[ReplicaKey] = frozenset()
    unschedulable: str = ""
    """The scheduler's message while the pod cannot be placed on any node ("" otherwise)."""
    template_hash: str = ""
    """The pool template's hash stamped on the pod when it was created ("" for a pod without)."""

    @property
    def alive(self) -> bool:
        """The server counts as part of the fleet: its pod exists and is not going away."""
        return self.pod_exists and not self.deleting and not self.pod_failed

    @property
    def serving(self) -> bool:
        """The pod is ready, so what its agent reports loaded is being served."""
        return self.alive and self.pod_ready


@dataclass(frozen=True)
class ResidentVersion:
    """A version of a model that servers must hold."""

    version: str
    uri: str


@dataclass(frozen=True)
class PoolState:
    """A pool, its models and its servers."""

    pool: ServerPool
    models: tuple[Model, ...]
    servers: tuple[ServerObs, ...]
    node_zones: tuple[str, ...] = ()
    resident: Mapping[str, tuple[ResidentVersion, ...]] = field(default_factory=dict)
    """Versions each model keeps loaded (stable first, then previous or canary)."""
    rejected: Mapping[str, str] = field(default_factory=dict)
    """Models of this pool that Ekko cannot use (name -> the problem): left out of the plan."""
    template_hash: str = ""
    """Hash of the server pod the pool's template renders now; "" when unknown (nothing is then
    outdated)."""

    @property
    def name(self) -> str:
        return self.pool.metadata.name

    def server(self, name: str) -> ServerObs | None:
        return self._by_name.get(name)

    @functools.cached_property
    def _by_name(self) -> Mapping[str, ServerObs]:
        # Built once per observation: converge looks every desired server up (it was a linear
        # scan per lookup, quadratic in the pool's size).
        return {s.name: s for s in self.servers}

    def outdated(self, server: ServerObs) -> bool:
        """Whether a live server's pod was made from another template than the pool's now."""
        return (
            bool(self.template_hash) and server.alive and server.template_hash != self.template_hash
        )

    def versions(self, model: Model) -> tuple[ResidentVersion, ...]:
        """The versions of a model to hold; the model's own spec version when nothing says else."""
        found = self.resident.get(model.metadata.name)
        if found:
            return found
        return (ResidentVersion(model.spec.version, model.spec.artifact.uri),)


def resident_versions(model: Model, versions: list[ModelVersion]) -> tuple[ResidentVersion, ...]:
    """Versions of a model its servers hold: stable first, then the canary or the previous one.

    The Model's status names them (the rollout writes it); URIs come from the ModelVersion of
    each version, or from the Model's spec for the version it started with.
    """
    status = model.status
    names = [model.stable()]
    for extra in (status.canary_version, status.previous_version) if status else ():
        if extra and extra not in names:
            names.append(extra)
    uris = {
        v.spec.version: v.spec.artifact.uri for v in versions if v.spec.model == model.metadata.name
    }
    uris.setdefault(model.spec.version, model.spec.artifact.uri)
    return tuple(ResidentVersion(n, uris[n]) for n in names if n in uris)
