"""Who pulls parameter updates from whom: the pull topology of an UpdateStream, as a pure function.

Per (model, shard group, region) one **leader** among the ready servers that report a data-plane
address pulls across the WAN: from the stream's source (the publishers) first, from other
regions' leaders of the same group when the source fails. The region's other servers are
**followers**: they pull from the leader, then from a **deputy** (the region's second candidate)
when the leader fails, then from the source. The deputy falls back to the source directly, so
no two followers ever wait on each other.

Leaders are sticky: a leader stays while it is ready and reachable, so a re-plan after an
unrelated change moves nobody. When it goes, the deputy (already holding everything the leader
served) takes over, and only then the next candidate by name.

Groups: with ``keyMapping: Replicated`` every server of the model is in group 0; with ``Modulo``
group ``s`` holds the servers that hold model shard ``s`` (a server in several groups gets one
duty per group). No clock, no API: the operator passes in what it observed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import ceil

from ekko.api.resources import UpdateDuty, UpdateStreamSpec, UpdateUpstream
from ekko.api.units import duration_seconds, parse_quantity

GroupRegion = tuple[int, str]


@dataclass(frozen=True)
class StreamServer:
    """One server holding the model, as the operator observed it."""

    name: str
    region: str
    shards: frozenset[int] = frozenset({0})
    ready: bool = True
    address: str = ""
    """The agent's update URL from ServerAssignment.status; empty when it runs no node yet."""

    @property
    def candidate(self) -> bool:
        """Can others pull from it: ready and reachable."""
        return self.ready and bool(self.address)


@dataclass(frozen=True)
class Topology:
    """The duties of every server of one stream, and the leaders chosen."""

    duties: Mapping[str, tuple[UpdateDuty, ...]]
    leaders: Mapping[GroupRegion, str] = field(default_factory=dict)
    deputies: Mapping[GroupRegion, str] = field(default_factory=dict)

    def leader_changes(self, previous: Mapping[GroupRegion, str]) -> dict[GroupRegion, str]:
        """Groups and regions whose leader differs from ``previous`` (for events)."""
        return {k: v for k, v in self.leaders.items() if previous.get(k) != v}


def groups_of(spec: UpdateStreamSpec, server: StreamServer) -> list[int]:
    """The shard groups a server belongs to under the stream's key mapping."""
    if spec.key_mapping == "Replicated":
        return [0]
    return sorted(server.shards)


def link_rate(spec: UpdateStreamSpec, from_region: str, to_region: str) -> int:
    """Bytes per second of a link (0: uncapped): an override for the region pair, else the
    stream's wan or lan budget."""
    for o in spec.bandwidth.overrides:
        if o.from_region == from_region and o.to_region == to_region:
            return ceil(parse_quantity(o.rate))
    budget = spec.bandwidth.lan if from_region == to_region else spec.bandwidth.wan
    return 0 if budget is None else ceil(parse_quantity(budget))


def previous_leaders(
    assignments: Mapping[str, Iterable[UpdateDuty]], stream: str
) -> dict[GroupRegion, str]:
    """The leaders the current assignments name (what stickiness keeps)."""
    out: dict[GroupRegion, str] = {}
    for server, duties in sorted(assignments.items()):
        for d in duties:
            if d.stream == stream and d.role == "Leader":
                out.setdefault((d.group, d.region), server)
    return out


def _choose(
    candidates: list[StreamServer], previous: str | None, deputy: str | None
) -> StreamServer | None:
    by_name = {s.name: s for s in candidates}
    for name in (previous, deputy):
        if name is not None and name in by_name:
            return by_name[name]
    return min(candidates, key=lambda s: s.name) if candidates else None


def plan_topology(
    stream: str,
    spec: UpdateStreamSpec,
    servers: Iterable[StreamServer],
    previous: Mapping[GroupRegion, str] | None = None,
    previous_deputies: Mapping[GroupRegion, str] | None = None,
) -> Topology:
    """Every server's update duties for one stream (see the module docstring)."""
    previous = previous or {}
    previous_deputies = previous_deputies or {}
    members: dict[GroupRegion, list[StreamServer]] = defaultdict(list)
    for s in sorted(servers, key=lambda s: s.name):
        for g in groups_of(spec, s):
            members[(g, s.region)].append(s)

    leaders: dict[GroupRegion, StreamServer] = {}
    deputies: dict[GroupRegion, StreamServer] = {}
    if spec.topology.leader_per_region:
        for key, in_group in members.items():
            candidates = [s for s in in_group if s.candidate]
            leader = _choose(candidates, previous.get(key), previous_deputies.get(key))
            if leader is None:
                continue
            leaders[key] = leader
            rest = [s for s in candidates if s.name != leader.name]
            deputy = _choose(rest, previous_deputies.get(key), None)
            if deputy is not None:
                deputies[key] = deputy

    source_region = spec.source.region

    def up(url: str, server: str, region: str, to_region: str) -> UpdateUpstream:
        rate = link_rate(spec, region, to_region)
        return UpdateUpstream(url=url, server=server, region=region, bandwidth=rate)

    def from_source(region: str) -> list[UpdateUpstream]:
        return [up(url, "", source_region, region) for url in spec.source.endpoints]

    def other_leaders(group: int, region: str) -> list[UpdateUpstream]:
        return [
            up(s.address, s.name, r, region)
            for (g, r), s in sorted(leaders.items())
            if g == group and r != region
        ]

    common = {
        "stream": stream,
        "values": spec.compression.values,
        "codec": spec.compression.codec,
        "policy": spec.priority.policy,
        "high_percentile": spec.priority.high_percentile,
        "idle_pull_seconds": max(
            1, min(300, int(duration_seconds(spec.topology.idle_pull_interval)))
        ),
        "paused": spec.paused,
    }
    duties: dict[str, list[UpdateDuty]] = defaultdict(list)
    for group, region in sorted(members):
        group_servers = members[(group, region)]
        leader = leaders.get((group, region))
        deputy = deputies.get((group, region))
        for s in group_servers:
            wan = from_source(region) + other_leaders(group, region)
            if leader is None or s.name == leader.name:
                role = "Leader" if leader is not None else "Follower"
                upstreams = wan
            else:
                role = "Follower"
                upstreams = [up(leader.address, leader.name, region, region)]
                if deputy is not None and s.name != deputy.name:
                    upstreams.append(up(deputy.address, deputy.name, region, region))
                upstreams += from_source(region)
            duties[s.name].append(
                UpdateDuty.model_validate(
                    {
                        **common,
                        "model": spec.model,
                        "region": region,
                        "group": group,
                        "role": role,
                        "upstreams": upstreams[:16],
                    }
                )
            )
    return Topology(
        duties={k: tuple(v) for k, v in duties.items()},
        leaders={k: v.name for k, v in leaders.items()},
        deputies={k: v.name for k, v in deputies.items()},
    )


def merge_duties(
    current: Iterable[UpdateDuty], stream: str, mine: Iterable[UpdateDuty]
) -> list[UpdateDuty]:
    """A server's duties with this stream's replaced by ``mine`` (other streams kept, in order)."""
    kept = [d for d in current if d.stream != stream]
    return kept + list(mine)


def path_to_source(topology: Topology, server: str, stream: str) -> bool:
    """Whether following each duty's first upstream from ``server`` reaches the source without
    a cycle (the checker the tests and the operator run on every plan)."""
    by_name = topology.duties
    for duty in by_name.get(server, ()):
        seen = {server}
        current = duty
        while True:
            if not current.upstreams:
                return False
            first = current.upstreams[0]
            if not first.server:
                break  # the source
            if first.server in seen:
                return False
            seen.add(first.server)
            nxt = [
                d
                for d in by_name.get(first.server, ())
                if d.stream == stream and d.group == current.group
            ]
            if not nxt:
                return False
            current = nxt[0]
    return True
