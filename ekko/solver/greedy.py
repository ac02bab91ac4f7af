"""Greedy placement, one shard replica at a time: the baselines and the solver's fallback.

One engine keeps per-server state in numpy arrays (so tens of thousands of replicas place in a
second or two) and enforces every rule the checker knows: memory, compute under the strictest SLO
cap present, SLO exclusions, distinct servers per shard, zone spread, assignment entries per
server and max servers.  Strategies differ only in the order of replicas and in how they pick
among servers that fit; when none fits a server is opened (an existing idle one first, else a new
one in the emptiest allowed zone).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from ekko.solver.instance import Instance, Item
from ekko.solver.types import ServerId, ZoneId

Choice = Literal["first", "best", "most", "least", "seldon"]
IntArray = npt.NDArray[np.int64]


@dataclass
class Replica:
    item: Item
    shard: int  # shard index inside the model
    current: ServerId | None = None


@dataclass
class Engine:
    """Mutable per-server state of a greedy placement."""

    inst: Instance
    dedicated: bool = False
    # Servers hold one SLO class only (keeps capped classes off servers that could run hotter).
    segregate: bool = False
    ids: list[ServerId] = field(default_factory=list)
    zones: list[ZoneId] = field(default_factory=list)
    existing: set[ServerId] = field(default_factory=set)
    # (model, shard) -> servers holding a replica
    holders: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    placed: dict[tuple[str, int], list[ServerId]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        inst = self.inst
        self.class_names = [c.name for c in inst.problem.slo_classes]
        self.class_index = {c: i for i, c in enumerate(self.class_names)}
        n_cls = len(self.class_names)
        self.excl = np.zeros((n_cls, n_cls), dtype=bool)
        for a, b in inst.exclusive:
            ia, ib = self.class_index[a], self.class_index[b]
            self.excl[ia, ib] = self.excl[ib, ia] = True
        self.class_cap = np.array([inst.cpu_cap[c] for c in self.class_names], dtype=np.int64)
        self.model_index = {m.id: i for i, m in enumerate(inst.problem.models)}
        size = 64
        self.mem_free: IntArray = np.zeros(size, dtype=np.int64)
        self.cpu_used: IntArray = np.zeros(size, dtype=np.int64)
        self.cap: IntArray = np.zeros(size, dtype=np.int64)
        self.held: IntArray = np.zeros(size, dtype=np.int64)  # assignment entries on it
        self.item_cap = inst.item_cap or np.iinfo(np.int64).max // 4
        self.present = np.zeros((size, n_cls), dtype=np.int64)
        self.owner: IntArray = np.full(size, -1, dtype=np.int64)
        self.zone_idx: IntArray = np.zeros(size, dtype=np.int64)
        self.zone_pos = {z: i for i, z in enumerate(inst.zones)}
        self.n = 0
        self.idle = [s for s in inst.problem.pool.servers]
        self.zone_count: dict[str, int] = {z: 0 for z in inst.zones}
        self.taken_ids = {s.id for s in inst.problem.pool.servers}
        self.existing = set(self.taken_ids)
        self.next_new = 0

    # -- servers ---------------------------------------------------------------------------
    def _grow(self) -> None:
        size = len(self.mem_free) * 2
        for name in ("mem_free", "cpu_used", "cap", "held", "owner", "zone_idx"):
            old = getattr(self, name)
            new = np.full(size, -1 if name == "owner" else 0, dtype=np.int64)
            new[: len(old)] = old
            setattr(self, name, new)
        pres = np.zeros((size, self.present.shape[1]), dtype=np.int64)
        pres[: self.present.shape[0]] = self.present
        self.present = pres

    def open(self, sid: ServerId, zone: ZoneId) -> int:
        if self.n == len(self.mem_free):
            self._grow()
        k = self.n
        self.n += 1
        self.ids.append(sid)
        self.zones.append(zone)
        self.mem_free[k] = self.inst.mem_cap
        self.cpu_used[k] = 0
        self.cap[k] = self.inst.cpu_full
        self.held[k] = 0
        self.zone_count[zone] = self.zone_count.get(zone, 0) + 1
        self.zone_idx[k] = self.zone_pos.get(zone, 0)
        return k

    def _new_id(self) -> ServerId:
        while True:
            sid = ServerId(f"{self.inst.problem.pool.name}-{self.next_new}")
            self.next_new += 1
            if sid not in self.taken_ids:
                self.taken_ids.add(sid)
                return sid

    def open_for(self, rep: Replica) -> int | None:
        """Open a server that can take this replica, or None at max servers."""
        if self.n >= self.inst.problem.pool.max_servers:
            return None
        allowed = self._allowed_zones(rep)
        if not allowed:
            return None
        for i, s in enumerate(self.idle):
            if s.zone in allowed or s.zone == "":
                del self.idle[i]
                return self.open(s.id, s.zone)
        zone = min(allowed, key=lambda z: (self.zone_count.get(z, 0), z))
        return self.open(self._new_id(), ZoneId(zone))

    def open_existing(self, sid: ServerId) -> int:
        for i, s in enumerate(self.idle):
            if s.id == sid:
                del self.idle[i]
                return self.open(s.id, s.zone)
        raise KeyError(sid)

    def _allowed_zones(self, rep: Replica) -> list[str]:
        if len(self.inst.zones) <= 1:
            return list(self.inst.zones)
        held = self.holders.get((rep.item.model, rep.shard), [])
        counts: dict[str, int] = {}
        for k in held:
            counts[self.zones[k]] = counts.get(self.zones[k], 0) + 1
        return [z for z in self.inst.zones if counts.get(z, 0) < rep.item.zone_cap]

    # -- feasibility -----------------------------------------------------------------------
    def feasible(self, rep: Replica) -> IntArray:
        """Indices of open servers that can take the replica."""
        it = rep.item
        n = self.n
        c = self.class_index[it.slo]
        ok = self.mem_free[:n] >= it.mem
        ok &= self.held[:n] + it.entries <= self.item_cap
        ok &= self.cpu_used[:n] + it.cpu <= np.minimum(self.cap[:n], self.class_cap[c])
        bad = self.excl[c]
        if self.segregate:
            bad = np.ones_like(bad)
            bad[c] = False
        if bad.any():
            ok &= ~(self.present[:n, bad] > 0).any(axis=1)
        if self.dedicated:
            mi = self.model_index[it.model]
            ok &= (self.owner[:n] == mi) | (self.owner[:n] == -1)
        held = self.holders.get((it.model, rep.shard), [])
        if held:
            ok[held] = False
            if len(self.inst.zones) > 1:
                allowed = np.zeros(len(self.inst.zones), dtype=bool)
                allowed[[self.zone_pos[z] for z in self._allowed_zones(rep)]] = True
                ok &= allowed[self.zone_idx[:n]]
        return np.flatnonzero(ok)

    def fits(self, rep: Replica, k: int) -> bool:
        cand = self.feasible(rep)
        return bool(np.any(cand == k))

    def put(self, rep: Replica, k: int) -> None:
        it = rep.item
        c = self.class_index[it.slo]
        self.mem_free[k] -= it.mem
        self.cpu_used[k] += it.cpu
        self.cap[k] = min(int(self.cap[k]), int(self.class_cap[c]))
        self.present[k, c] += 1
        self.held[k] += it.entries
        if self.dedicated:
            self.owner[k] = self.model_index[it.model]
        key = (it.model, rep.shard)
        self.holders.setdefault(key, []).append(k)
        self.placed.setdefault(key, []).append(self.ids[k])

    # -- strategies ------------------------------------------------------------------------
    def choose(self, rep: Replica, how: Choice) -> int | None:
        cand = self.feasible(rep)
        if len(cand) == 0:
            return None
        if how == "first":
            return int(cand[0])
        it = rep.item
        mem_cap = float(self.inst.mem_cap)
        cpu_cap = float(self.inst.cpu_full) or 1.0
        mem_after = (self.mem_free[cand] - it.mem) / mem_cap  # free fraction after
        cpu_after = (self.cpu_used[cand] + it.cpu) / cpu_cap  # used fraction after
        if how == "best":
            c = self.class_index[it.slo]
            limit = np.minimum(self.cap[cand], self.class_cap[c])
            slack = mem_after + (limit - self.cpu_used[cand] - it.cpu) / cpu_cap
            return int(cand[int(np.argmin(slack))])
        if how == "most":
            score = (1.0 - mem_after) + cpu_after
            return int(cand[int(np.argmax(score))])
        if how == "least":
            score = mem_after + (1.0 - cpu_after)
            return int(cand[int(np.argmax(score))])
        # seldon: the current server if it fits, else the most free memory
        if rep.current is not None:
            for k in cand:
                if self.ids[int(k)] == rep.current:
                    return int(k)
        return int(cand[int(np.argmax(self.mem_free[cand]))])

    def place(self, rep: Replica, how: Choice) -> bool:
        k = self.choose(rep, how)
        if k is None:
            k = self.open_for(rep)
            if k is None or not self.fits(rep, k):
                return False
        self.put(rep, k)
        return True


def replicas_of(inst: Instance, current: dict[tuple[str, int], list[ServerId]]) -> list[Replica]:
    """Every shard replica, in model order; each remembers one current server not yet used."""
    out: list[Replica] = []
    for it in inst.items:
        for s in it.shards:
            cur = list(current.get((it.model, s), []))
            for _ in range(it.replicas):
                out.append(Replica(item=it, shard=s, current=cur.pop(0) if cur else None))
    return out


def decreasing(inst: Instance) -> Callable[[Replica], float]:
    """Sort key for (multi-dimensional) decreasing order: the larger normalised dimension."""

    def key(r: Replica) -> float:
        cap = inst.cpu_cap[r.item.slo] or 1
        return -max(r.item.mem / inst.mem_cap, r.item.cpu / cap)

    return key


def capped_first(inst: Instance) -> Callable[[Replica], tuple[int, float]]:
    """Sort key: SLO classes with the lowest utilisation cap first, then decreasing size.  The
    capped classes then fill their own servers before others can spill onto them."""
    size = decreasing(inst)

    def key(r: Replica) -> tuple[int, float]:
        return (inst.cpu_cap[r.item.slo], size(r))

    return key


@dataclass
class GreedyResult:
    placed: dict[tuple[str, int], list[ServerId]]
    servers: list[tuple[ServerId, ZoneId]]
    unplaced: list[Replica]


def run(
    inst: Instance,
    how: Choice,
    order: Iterable[Replica],
    *,
    keep_current: bool = False,
    dedicated: bool = False,
    segregate: bool = False,
    deadline: float | None = None,
) -> GreedyResult:
    """Place replicas in order; with keep_current first pin each to its current server if it
    still fits there.  Past ``deadline`` (``time.monotonic()``) the rest is left unplaced, so an
    interrupted run is never taken for a plan."""
    eng = Engine(inst, dedicated=dedicated, segregate=segregate)
    todo = list(order)
    if keep_current:
        index: dict[ServerId, int] = {}
        rest: list[Replica] = []
        idle_ids = {s.id for s in eng.idle}
        # Keep big replicas in place first: evicting the small ones moves fewer bytes.
        for rep in sorted(todo, key=lambda r: -r.item.mem):
            cur = rep.current
            if cur is None or (cur not in index and cur not in idle_ids):
                rest.append(rep)
                continue
            k = index.get(cur)
            if k is None:
                k = eng.open_existing(cur)
                index[cur] = k
            if eng.fits(rep, k):
                eng.put(rep, k)
            else:
                rest.append(rep)
        rest_ids = {id(r) for r in rest}
        todo = [r for r in todo if id(r) in rest_ids]  # original order among the rest
    unplaced: list[Replica] = []
    for n, rep in enumerate(todo):
        if deadline is not None and n % 64 == 0 and time.monotonic() > deadline:
            unplaced.extend(todo[n:])
            break
        if not eng.place(rep, how):
            unplaced.append(rep)
    used = {int(k) for ks in eng.holders.values() for k in ks}
    servers = [(eng.ids[k], eng.zones[k]) for k in sorted(used)]
    return GreedyResult(placed=eng.placed, servers=servers, unplaced=unplaced)


@dataclass
class CountResult:
    """A greedy placement in counts per (item, server): the optimiser's own representation."""

    counts: dict[tuple[int, ServerId], int]
    servers: list[tuple[ServerId, ZoneId]]
    complete: bool  # every replica placed (False: over max_servers or the deadline passed)


def item_key(inst: Instance) -> Callable[[Item], float]:
    """Sort key for items in decreasing order (the same measure as :func:`decreasing`)."""

    def key(it: Item) -> float:
        cap = inst.cpu_cap[it.slo] or 1
        return -max(it.mem / inst.mem_cap, it.cpu / cap)

    return key


def run_counts(
    inst: Instance,
    items: Iterable[Item],
    how: Literal["first", "best"] = "first",
    *,
    deadline: float | None = None,
) -> CountResult:
    """Place whole items at once: each server takes as many of an item's shards as fit (at most
    ``P_i`` distinct ones, zone spread kept per zone), first fit or best fit over the open
    servers, then new servers in the emptiest zone.  One vectorised pass per item instead of
    one per shard replica, so tens of thousands of replicas place in a small fraction of the
    replica-by-replica engine's time; the counts map back to shards by wrap-around
    (``mapping.realise``).  Existing idle servers are opened before new ones."""
    eng = Engine(inst)
    n_z = len(inst.zones)
    spread = n_z > 1
    counts: dict[tuple[int, ServerId], int] = {}
    big = np.iinfo(np.int64).max // 4
    for it in items:
        if deadline is not None and time.monotonic() > deadline:
            return CountResult(counts, _used(eng, counts), False)
        c = eng.class_index[it.slo]
        p = it.num_shards
        left = it.demand
        room_z = [p * it.zone_cap if spread else big] * n_z
        n = eng.n
        if n:
            k = np.minimum(p, (eng.item_cap - eng.held[:n]) // it.entries)
            if it.mem > 0:
                k = np.minimum(k, eng.mem_free[:n] // it.mem)
            # A class's cap holds for everything on a server that hosts it: even a replica
            # with no load of its own cannot join a server already above its class's cap.
            lim = np.minimum(eng.cap[:n], eng.class_cap[c]) - eng.cpu_used[:n]
            if it.cpu > 0:
                k = np.minimum(k, np.maximum(lim, 0) // it.cpu)
            else:
                k[lim < 0] = 0
            bad = eng.excl[c]
            if bad.any():
                k[(eng.present[:n, bad] > 0).any(axis=1)] = 0
            cand = np.flatnonzero(k > 0)
            if how == "best" and len(cand):
                cap = float(inst.cpu_full) or 1.0
                slack = (
                    eng.mem_free[cand] / float(inst.mem_cap)
                    + (np.minimum(eng.cap[cand], eng.class_cap[c]) - eng.cpu_used[cand]) / cap
                )
                cand = cand[np.argsort(slack, kind="stable")]
            for s_np in cand:
                if left == 0:
                    break
                s = int(s_np)
                z = int(eng.zone_idx[s])
                take = min(int(k[s]), left, room_z[z])
                if take > 0:
                    _put_many(eng, it, s, take, counts)
                    left -= take
                    room_z[z] -= take
        while left > 0:
            allowed = [z for z in range(n_z) if room_z[z] > 0]
            if not allowed or eng.n >= inst.problem.pool.max_servers:
                return CountResult(counts, _used(eng, counts), False)
            names = [inst.zones[z] for z in allowed]
            opened = _open_in(eng, names)
            if opened is None:
                return CountResult(counts, _used(eng, counts), False)
            s = opened
            z = int(eng.zone_idx[s])
            k1 = min(p, int(eng.item_cap - eng.held[s]) // it.entries)
            if it.mem > 0:
                k1 = min(k1, int(eng.mem_free[s]) // it.mem)
            if it.cpu > 0:
                k1 = min(k1, int(min(eng.cap[s], eng.class_cap[c]) - eng.cpu_used[s]) // it.cpu)
            take = min(k1, left, room_z[z])
            if take <= 0:  # explain() rules this out; never loop forever
                return CountResult(counts, _used(eng, counts), False)
            _put_many(eng, it, s, take, counts)
            left -= take
            room_z[z] -= take
    return CountResult(counts, _used(eng, counts), True)


def _open_in(eng: Engine, zones: list[str]) -> int | None:
    for i, s in enumerate(eng.idle):
        if s.zone in zones or s.zone == "":
            del eng.idle[i]
            return eng.open(s.id, s.zone)
    zone = min(zones, key=lambda z: (eng.zone_count.get(z, 0), z))
    return eng.open(eng._new_id(), ZoneId(zone))


def _put_many(
    eng: Engine, it: Item, s: int, k: int, counts: dict[tuple[int, ServerId], int]
) -> None:
    c = eng.class_index[it.slo]
    eng.mem_free[s] -= it.mem * k
    eng.cpu_used[s] += it.cpu * k
    eng.cap[s] = min(int(eng.cap[s]), int(eng.class_cap[c]))
    eng.present[s, c] += k
    eng.held[s] += k * it.entries
    key = (it.index, eng.ids[s])
    counts[key] = counts.get(key, 0) + k


def _used(eng: Engine, counts: dict[tuple[int, ServerId], int]) -> list[tuple[ServerId, ZoneId]]:
    used = {sid for (_, sid), k in counts.items() if k}
    return [(eng.ids[k], eng.zones[k]) for k in range(eng.n) if eng.ids[k] in used]
