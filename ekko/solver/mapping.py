"""From counts per (item, server) back to the servers of every shard replica.

Without a current placement, wrap-around filling (README, "Mapping back") is exact: walk the
servers zone by zone and hand each the next z[i,n] shard ids cyclically.  With a current placement
the same counts are realised by a min-cost flow that keeps every shard on its current servers
whenever the counts allow, which is what keeps bytes moved small.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from ortools.graph.python import min_cost_flow

from ekko.solver.instance import Item
from ekko.solver.types import ServerId


def wrap_around(item: Item, counts: list[tuple[ServerId, str, int]]) -> dict[int, list[ServerId]]:
    """counts: (server, zone, z) of one item; servers of one zone must be contiguous."""
    out: dict[int, list[ServerId]] = {s: [] for s in item.shards}
    p = item.num_shards
    pos = 0
    for sid, _, k in sorted(counts, key=lambda t: t[1]):
        for _ in range(k):
            out[item.shards[pos % p]].append(sid)
            pos += 1
    return out


def sticky(
    item: Item,
    counts: list[tuple[ServerId, str, int]],
    current: Mapping[int, list[ServerId]],
) -> dict[int, list[ServerId]] | None:
    """Min-cost flow: source -> shard (R) -> (shard, zone) (zone cap) -> server (1, cost 0 if the
    shard is there now, else 1) -> sink (z).  None if the counts cannot be realised."""
    f = min_cost_flow.SimpleMinCostFlow()
    shards = list(item.shards)
    zones = sorted({z for _, z, _ in counts})
    zpos = {z: i for i, z in enumerate(zones)}
    src = 0
    shard0 = 1
    sz0 = shard0 + len(shards)
    srv0 = sz0 + len(shards) * len(zones)
    sink = srv0 + len(counts)
    total = sum(k for _, _, k in counts)
    arcs: list[tuple[int, int, ServerId]] = []  # (arc, shard index, server)
    for j, _ in enumerate(shards):
        f.add_arc_with_capacity_and_unit_cost(src, shard0 + j, item.replicas, 0)
        for zi in range(len(zones)):
            f.add_arc_with_capacity_and_unit_cost(
                shard0 + j, sz0 + j * len(zones) + zi, item.zone_cap, 0
            )
    for n, (sid, zone, k) in enumerate(counts):
        f.add_arc_with_capacity_and_unit_cost(srv0 + n, sink, k, 0)
        zi = zpos[zone]
        for j, s in enumerate(shards):
            cost = 0 if sid in current.get(s, ()) else 1
            a = f.add_arc_with_capacity_and_unit_cost(sz0 + j * len(zones) + zi, srv0 + n, 1, cost)
            arcs.append((a, s, sid))
    f.set_node_supply(src, total)
    f.set_node_supply(sink, -total)
    if f.solve() != f.OPTIMAL:
        return None
    out: dict[int, list[ServerId]] = {s: [] for s in shards}
    for a, s, sid in arcs:
        if f.flow(a):
            out[s].append(sid)
    if any(len(v) != item.replicas for v in out.values()):
        return None
    return out


def realise(
    items: list[Item],
    counts: Mapping[tuple[int, ServerId], int],
    zone_of: Mapping[ServerId, str],
    current: Mapping[tuple[str, int], list[ServerId]],
) -> dict[tuple[str, int], list[ServerId]] | None:
    """Servers of every (model, shard) realising the counts; None if some item cannot be."""
    per_item: dict[int, list[tuple[ServerId, str, int]]] = defaultdict(list)
    for (i, sid), k in counts.items():
        if k > 0:
            per_item[i].append((sid, zone_of[sid], k))
    out: dict[tuple[str, int], list[ServerId]] = {}
    for it in items:
        cs = sorted(per_item.get(it.index, []))
        cur = {s: current.get((it.model, s), []) for s in it.shards}
        got = sticky(it, cs, cur) if any(cur.values()) else wrap_around(it, cs)
        if got is None:
            return None
        for s, servers in got.items():
            out[it.model, s] = servers
    return out
