"""The replica's state: numpy tables of versioned rows, and the messages replicas exchange.

State-based, not log-based: a row holds only its newest value and version, so a replica that fell
behind catches up with one copy of each changed row, never with every delta. :meth:`Store.apply`
is idempotent and monotone (it never lowers a row's version), so duplicated, dropped and reordered
responses are harmless. Each shard keeps a bounded cache of recently updated keys with a *floor*:
a pull whose knowledge is at or above the floor is answered from the cache in O(recent); below
it, by a full scan of the shard (counted, because it is what a lagging peer costs).

Embedding tables are rows keyed by an int64 id; a dense tensor is cut into chunks of ``dim``
elements keyed 0, 1, … so both travel the same way. Pure: no I/O and no clock (``now`` is passed in).
"""

from __future__ import annotations

import json
import secrets
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from ekko.updates.versions import (
    DEFAULT_MAX_EXCEPTIONS,
    EMPTY_VECTOR,
    Knowledge,
    Source,
    VersionVector,
    newer,
)

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
Bools = npt.NDArray[np.bool_]

ValueDType = Literal["float32", "float16", "int8"]
TableKind = Literal["embedding", "dense"]
ShardId = tuple[str, int]
"""``(table, part)``: a row with key ``k`` lives in part ``k mod shards``."""

VALUE_DTYPES: tuple[ValueDType, ...] = ("float32", "float16", "int8")

MAX_ACKS = 64
MAX_SUPERSEDED = 4096
"""Keys reported per responder in one pull request (beyond: the responder forgets the peer)."""
MAX_SUPERSEDED_SOURCES = 16
"""Responders whose superseded rows a store tracks (the least recently overwritten one goes)."""
"""Acknowledgements a pull request carries at most (the newest)."""

ROW_OVERHEAD_BYTES = 24
"""Upper bound of the per-row bytes besides values on the wire (key 8, seq 8, publish time 4,
class 1, source index 2); the scheduler budgets with it and the codec never exceeds it."""


def catalogue_id(specs: Sequence[TableSpec]) -> int:
    """A 32-bit id of a table catalogue (order-independent; 0 for none)."""
    if not specs:
        return 0
    rows = sorted(
        [s.name, s.dim, s.kind, s.shards, s.model, s.weight, list(s.shape)] for s in specs
    )
    return zlib.crc32(json.dumps(rows, separators=(",", ":")).encode()) | 1


def row_wire_bytes(dim: int, dtype: ValueDType) -> int:
    """Bytes one row costs on the wire before compression (an upper bound)."""
    if dtype == "float32":
        return ROW_OVERHEAD_BYTES + 4 * dim
    if dtype == "float16":
        return ROW_OVERHEAD_BYTES + 2 * dim
    return ROW_OVERHEAD_BYTES + dim + 4  # int8 values plus a float32 scale


def _i64(values: npt.ArrayLike) -> I64:
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64).reshape(-1))


def _column(values: npt.ArrayLike, n: int) -> I64:
    """An int64 column of ``n`` rows; a scalar is repeated."""
    arr = np.asarray(values, dtype=np.int64)
    return np.ascontiguousarray(np.broadcast_to(arr.reshape(-1) if arr.ndim else arr, n))


@dataclass(frozen=True)
class TableSpec:
    """A table's shape and where it belongs. ``weight`` is the model's traffic share (``p_m``)."""

    name: str
    dim: int
    kind: TableKind = "embedding"
    shards: int = 1
    model: str = ""
    weight: float = 1.0
    shape: tuple[int, ...] = ()
    """Dense tensors only: the tensor's shape (it is cut into ``ceil(size / dim)`` chunks)."""

    def __post_init__(self) -> None:
        if not self.name or self.dim < 1 or self.shards < 1:
            raise ValueError(f"bad table spec {self!r}: need a name, dim >= 1 and shards >= 1")
        if self.kind == "dense" and not self.shape:
            raise ValueError(f"dense table {self.name!r} needs its tensor shape")

    def part_of(self, keys: npt.ArrayLike) -> I64:
        return _i64(keys) % self.shards

    @property
    def n_chunks(self) -> int:
        size = int(np.prod(self.shape)) if self.shape else 0
        return -(-size // self.dim)


def _readonly(arr: npt.NDArray[np.generic]) -> None:
    arr.flags.writeable = False


@dataclass(frozen=True, eq=False)
class Batch:
    """Rows of one shard in one response, plus what the responder vouches for (``covered``):
    after applying the rows, the receiver holds every write of ``(epoch, origin)`` up to
    ``covered[(epoch, origin)]`` that the responder held (see :mod:`ekko.updates.versions`)."""

    table: str
    part: int
    keys: I64
    epochs: I64
    origins: I64
    seqs: I64
    publish_times: F64
    values: F32
    classes: U8
    covered: VersionVector = EMPTY_VECTOR
    base_values: F32 | None = None
    """Sender side (frame version 3, int8): the value the peer holds of each row marked in
    ``base_mask`` — exactly what this responder sent it — so the codec may send those rows as
    residuals against it (see :func:`ekko.updates.codec.held_values`)."""
    base_mask: Bools | None = None
    residual: Bools | None = None
    """Receiver side: rows whose ``values`` are residuals to add to the value held from the
    response's ``source`` (see :meth:`Store.resolve`), not values."""

    def __post_init__(self) -> None:
        n = len(self.keys)
        arrays = (self.epochs, self.origins, self.seqs, self.publish_times, self.classes)
        if any(len(a) != n for a in arrays) or self.values.ndim != 2 or len(self.values) != n:
            raise ValueError("batch arrays must have one entry per key")
        for opt in (self.base_mask, self.residual):
            if opt is not None and len(opt) != n:
                raise ValueError("batch arrays must have one entry per key")
        if (self.base_values is None) != (self.base_mask is None) or (
            self.base_values is not None and self.base_values.shape != self.values.shape
        ):
            raise ValueError("base values and their mask come together, one row per key")
        for a in (self.keys, self.epochs, self.origins, self.seqs, self.publish_times):
            _readonly(a)
        _readonly(self.values)
        _readonly(self.classes)

    @classmethod
    def of(
        cls,
        table: str,
        part: int,
        keys: npt.ArrayLike,
        *,
        epochs: npt.ArrayLike,
        origins: npt.ArrayLike,
        seqs: npt.ArrayLike,
        publish_times: npt.ArrayLike,
        values: npt.ArrayLike,
        classes: npt.ArrayLike | None = None,
        covered: VersionVector = EMPTY_VECTOR,
    ) -> Batch:
        """A batch from array-likes (copied and converted); scalars broadcast to every row."""
        k = _i64(keys)
        n = len(k)
        vals = np.array(values, dtype=np.float32, copy=True)
        if vals.ndim == 1:
            vals = vals.reshape(n, -1) if n else vals.reshape(0, max(1, vals.size))
        return cls(
            table,
            int(part),
            k.copy(),
            _column(epochs, n).copy(),
            _column(origins, n).copy(),
            _column(seqs, n).copy(),
            np.broadcast_to(np.asarray(publish_times, dtype=np.float64), n).copy(),
            vals,
            np.broadcast_to(
                np.asarray(0 if classes is None else classes, dtype=np.uint8), n
            ).copy(),
            covered,
        )

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def shard(self) -> ShardId:
        return (self.table, self.part)


@dataclass(frozen=True, eq=False)
class ApplyResult:
    """What one :meth:`Store.apply` changed: the rows applied (newer than what was held) and the
    count ignored as duplicates or stale."""

    shard: ShardId
    applied: int
    ignored: int
    keys: I64
    seqs: I64
    publish_times: F64
    classes: U8
    epochs: I64
    origins: I64


@dataclass(frozen=True, eq=False)
class Candidates:
    """Rows of one shard newer than a peer's knowledge: the scheduler chooses among them.

    ``rows`` index the store's table; ``new`` marks rows the peer has never received;
    ``magnitudes`` is each row's last update size (L2 of the change); ``drift`` (when the store
    tracks it) is how far each row moved since the store's drift cut, the version every live
    downstream holds (L2 of the current value minus the value at the cut; see
    :meth:`Store.set_base_cut`).
    """

    table: str
    part: int
    rows: I64
    keys: I64
    epochs: I64
    origins: I64
    seqs: I64
    publish_times: F64
    magnitudes: F64
    new: Bools
    full_scan: bool = False
    drift: F64 | None = None
    born: tuple[I64, I64, I64] | None = None
    """``(epochs, origins, seqs)`` of the first version of each row this store held: a response
    must not vouch past the born version of a new row it did not send, or the peer would stop
    seeing that row as new."""

    @property
    def n(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class PullRequest:
    """A downstream's pull: its knowledge per shard (absent shards: nothing known), the byte
    budget its link allows, the value encoding it wants, and who it is (for metrics)."""

    knowledge: Mapping[ShardId, Knowledge]
    budget_bytes: int
    dtype: ValueDType = "float32"
    zstd: bool = False
    peer: str = ""
    region: str = ""
    frame_version: int = 3
    """The newest response frame version the puller decodes (a request without it: 1)."""
    catalogue: int = 0
    """:func:`catalogue_id` of the tables the puller holds: a responder with the same catalogue
    leaves it out of the response (0: always send it)."""
    acks: tuple[tuple[int, int], ...] = ()
    """``(source, number)`` of responses applied since the last request, every residual in
    them resolved: a responder uses its memory of a row as a residual base only once the
    response that sent it is acknowledged."""
    puller: int = 0
    """The puller's store id (random per store): a responder remembers what it sent per
    ``(peer, puller)``, so two pullers under one name never share a memory (0: unknown, and
    then no residual rows)."""
    superseded: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """``(table, keys)``: rows the addressed responder delivered that something else (another
    upstream, a restore) has overwritten since the last pull to it: the responder no longer
    takes what it sent as what the puller holds."""
    forget: bool = False
    """Too many rows were overwritten to list: the responder forgets what it sent this puller."""
    models: tuple[str, ...] = ()
    """The models whose tables the puller wants from this responder (empty: every table; a
    table that names no model goes to every puller). A server in two streams pulls each model
    from that stream's upstreams."""


@dataclass(frozen=True)
class PullResponse:
    """The responder's table catalogue and the batches chosen for one pull. ``complete`` is true
    when every candidate row fitted in the budget; ``backlog`` counts those that did not."""

    tables: tuple[TableSpec, ...]
    batches: tuple[Batch, ...]
    complete: bool = True
    backlog: int = 0
    source: int = 0
    """The responder's id for residual rows (:attr:`Batch.residual`): a residual applies only
    to a row whose value this same responder delivered (0: none)."""
    number: int = 0
    """The responder's number for this response, acknowledged in the next request (0: none)."""

    @property
    def n_rows(self) -> int:
        return sum(b.n for b in self.batches)


@dataclass(frozen=True, eq=False)
class TableSnapshot:
    """A table's rows sorted by key (for comparing replicas and for persistence)."""

    spec: TableSpec
    keys: I64
    epochs: I64
    origins: I64
    seqs: I64
    publish_times: F64
    values: F32

    def same_rows(self, other: TableSnapshot) -> bool:
        """Same keys, versions and values (bit for bit)."""
        return (
            np.array_equal(self.keys, other.keys)
            and np.array_equal(self.epochs, other.epochs)
            and np.array_equal(self.origins, other.origins)
            and np.array_equal(self.seqs, other.seqs)
            and np.array_equal(self.values, other.values)
        )


@dataclass
class _Shard:
    knowledge: Knowledge = field(default_factory=Knowledge)
    cache: OrderedDict[int, None] = field(default_factory=OrderedDict)
    floor: dict[Source, int] = field(default_factory=dict)
    high_water: dict[Source, int] = field(default_factory=dict)
    downstreams: tuple[Knowledge, ...] = ()


def _dominates(vector: VersionVector, other: Mapping[Source, int]) -> bool:
    return all(s <= vector.get(e, o) for (e, o), s in other.items())


class _Table:
    """Growable columns of one table (internal: the store owns all mutation)."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.index: dict[int, int] = {}
        self.n = 0
        cap = 64
        self.keys = np.zeros(cap, dtype=np.int64)
        self.parts = np.zeros(cap, dtype=np.int64)
        self.epochs = np.zeros(cap, dtype=np.int64)
        self.origins = np.zeros(cap, dtype=np.int64)
        self.seqs = np.zeros(cap, dtype=np.int64)
        self.born_epochs = np.zeros(cap, dtype=np.int64)
        self.born_origins = np.zeros(cap, dtype=np.int64)
        self.born_seqs = np.zeros(cap, dtype=np.int64)
        self.publish_times = np.zeros(cap, dtype=np.float64)
        self.magnitudes = np.zeros(cap, dtype=np.float64)
        self.values = np.zeros((cap, spec.dim), dtype=np.float32)
        self.base_values = np.zeros((cap, spec.dim), dtype=np.float32)
        self.tags = np.zeros(cap, dtype=np.int64)
        """Which responder delivered each row's value (0: written here, restored or unknown);
        not persisted, so a restarted store takes no residual until it holds a full row."""
        self.mean_magnitude = 0.0
        self.shards = [_Shard() for _ in range(spec.shards)]

    _COLUMNS = (
        "keys",
        "parts",
        "epochs",
        "origins",
        "seqs",
        "born_epochs",
        "born_origins",
        "born_seqs",
        "publish_times",
        "magnitudes",
        "values",
        "base_values",
    )

    def reserve(self, extra: int) -> None:
        need = self.n + extra
        cap = len(self.keys)
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        for name in (*self._COLUMNS, "tags"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def lookup(self, keys: I64) -> I64:
        get = self.index.get
        return np.fromiter((get(k, -1) for k in keys.tolist()), dtype=np.int64, count=len(keys))


class Store:
    """Versioned tables of one replica (an origin, a leader or a follower).

    ``cache_capacity`` bounds each shard's cache of recently updated keys; ``max_exceptions``
    bounds each shard's exception set; ``magnitude_alpha`` is the weight of one update in the
    table's running mean magnitude (the denominator of the scheduler's significance).
    """

    def __init__(
        self,
        cache_capacity: int = 65536,
        max_exceptions: int = DEFAULT_MAX_EXCEPTIONS,
        magnitude_alpha: float = 0.01,
    ) -> None:
        if cache_capacity < 1:
            raise ValueError("cache_capacity must be at least 1")
        self.cache_capacity = cache_capacity
        self.max_exceptions = max_exceptions
        self.magnitude_alpha = magnitude_alpha
        self._tables: dict[str, _Table] = {}
        self.full_scans = 0
        """Pulls answered by scanning a whole shard (the puller was below the cache floor)."""
        self.changes = 0
        """Incremented on every apply that changed something: a cheap "has anything changed"."""
        self.puller_id = secrets.randbits(62) | 1
        """Names this store in its pull requests (see :attr:`PullRequest.puller`)."""
        self._acks: list[tuple[int, int]] = []
        self._superseded: dict[int, dict[str, set[int]]] = {}
        self._superseded_overflow: set[int] = set()

    # --- catalogue -----------------------------------------------------------------------------

    def declare(self, spec: TableSpec) -> None:
        """Create a table (idempotent; a different spec under the same name is an error)."""
        existing = self._tables.get(spec.name)
        if existing is None:
            self._tables[spec.name] = _Table(spec)
        elif existing.spec != spec:
            raise ValueError(f"table {spec.name!r} exists as {existing.spec!r}, not {spec!r}")

    def specs(self) -> tuple[TableSpec, ...]:
        return tuple(t.spec for t in self._tables.values())

    def spec(self, table: str) -> TableSpec:
        return self._table(table).spec

    def has_table(self, table: str) -> bool:
        return table in self._tables

    def shards(self) -> list[ShardId]:
        return [(t.spec.name, p) for t in self._tables.values() for p in range(t.spec.shards)]

    def _table(self, table: str) -> _Table:
        try:
            return self._tables[table]
        except KeyError:
            raise KeyError(f"unknown table {table!r}") from None

    def _shard(self, shard: ShardId) -> _Shard:
        table, part = shard
        t = self._table(table)
        if not 0 <= part < t.spec.shards:
            raise KeyError(f"table {table!r} has no part {part}")
        return t.shards[part]

    # --- knowledge -----------------------------------------------------------------------------

    def knowledge(self, shard: ShardId) -> Knowledge:
        return self._shard(shard).knowledge

    def knowledge_map(self) -> dict[ShardId, Knowledge]:
        return {s: self.knowledge(s) for s in self.shards()}

    def high_water(self, shard: ShardId) -> VersionVector:
        """The newest seq held per source in the shard (rows may sit beyond the knowledge)."""
        return VersionVector.of(self._shard(shard).high_water)

    def set_downstreams(self, shard: ShardId, knowledge: Sequence[Knowledge]) -> None:
        """Tell the shard what its live downstreams hold (the scheduler passes each live peer's
        knowledge: its last request plus what was sent to it since). From now on, when a row
        whose held version *every* downstream holds is overwritten, its old value becomes the
        row's baseline, so :attr:`Candidates.drift` measures how far the row moved since the
        downstreams' copy (exactly, for the slowest downstream). Costs one more copy of the
        values. With no downstreams nothing is held below, and the baseline is zero."""
        self._shard(shard).downstreams = tuple(knowledge)

    def set_base_cut(self, shard: ShardId, cut: VersionVector) -> None:
        """:meth:`set_downstreams` with one downstream that holds exactly ``cut``."""
        self.set_downstreams(shard, (Knowledge(cut),))

    def rebase(self, table: str, rows: npt.ArrayLike) -> None:
        """The drift baseline of ``rows`` becomes their current value (they were just sent to
        the downstreams)."""
        t = self._table(table)
        r = _i64(rows)
        t.base_values[r] = t.values[r]

    def downstreams(self, shard: ShardId) -> tuple[Knowledge, ...]:
        return self._shard(shard).downstreams

    def floor(self, shard: ShardId) -> VersionVector:
        return VersionVector.of(self._shard(shard).floor)

    def shard_version(self, shard: ShardId) -> int:
        """A 64-bit version of the shard's content: unchanged shard, same number."""
        return self.high_water(shard).digest()

    def nothing_newer(self, shard: ShardId, knowledge: Knowledge) -> bool:
        """True when every row of the shard is covered by ``knowledge``'s vector: the shard is
        skipped without looking at a row."""
        return _dominates(knowledge.vector, self._shard(shard).high_water)

    def pull_request(
        self,
        budget_bytes: int,
        dtype: ValueDType = "float32",
        zstd: bool = False,
        peer: str = "",
        region: str = "",
        *,
        source: int = 0,
        models: tuple[str, ...] = (),
    ) -> PullRequest:
        acks, self._acks = tuple(self._acks[-MAX_ACKS:]), []
        superseded = self._superseded.pop(source, {}) if source else {}
        forget = source in self._superseded_overflow
        self._superseded_overflow.discard(source)
        return PullRequest(
            self.knowledge_map(),
            budget_bytes,
            dtype,
            zstd,
            peer,
            region,
            catalogue=catalogue_id(self.specs()),
            acks=acks,
            puller=self.puller_id,
            superseded=tuple((t, tuple(sorted(k))) for t, k in superseded.items()),
            forget=forget,
            models=models,
        )

    def _supersede(self, table: str, tags: I64, keys: I64, source: int) -> None:
        """Remember, per responder, the rows it delivered that ``source`` now overwrites (for
        :meth:`pull_request` addressed to that responder)."""
        moved = (tags != 0) & (tags != source)
        for tag in np.unique(tags[moved]).tolist():
            if tag in self._superseded_overflow:
                continue
            per = self._superseded.pop(tag, {})  # re-inserted: the most recent last
            held = per.setdefault(table, set())
            held.update(keys[moved & (tags == tag)].tolist())
            if sum(len(k) for k in per.values()) > MAX_SUPERSEDED:
                self._superseded_overflow.add(tag)
                continue
            self._superseded[tag] = per
            while len(self._superseded) > MAX_SUPERSEDED_SOURCES:
                oldest = next(iter(self._superseded))
                del self._superseded[oldest]
                self._superseded_overflow.add(oldest)
        while len(self._superseded_overflow) > 4 * MAX_SUPERSEDED_SOURCES:
            self._superseded_overflow.pop()

    def acknowledge(self, source: int, number: int) -> None:
        """Acknowledge response ``number`` of ``source`` in the next pull request (call once
        every batch of it is applied and none of its residuals was dropped). Sent once: a lost
        acknowledgement only costs full rows."""
        if source and number:
            self._acks.append((source, number))

    def apply_response(self, response: PullResponse) -> list[ApplyResult]:
        """Apply every batch of ``response`` (declaring its tables) and acknowledge it."""
        for spec in response.tables:
            self.declare(spec)
        results, dropped = [], False
        for b in response.batches:
            resolved = self.resolve(b, response.source)
            dropped |= resolved.n < b.n
            results.append(self.apply(resolved, response.source))
        if not dropped:
            self.acknowledge(response.source, response.number)
        return results

    # --- apply ---------------------------------------------------------------------------------

    def resolve(self, batch: Batch, source: int) -> Batch:
        """``batch`` with its residual rows turned into values: held value plus residual, for
        a row whose held value ``source`` delivered (the responder sends a residual only against
        a version the puller's knowledge covers and that it sent itself, so the held version is
        exactly that one: knowledge is sound, and a row another responder, a restore or a write
        touched since has another tag). A residual that does not apply is dropped, and so is
        what the batch vouches for (``covered``): the rows it applies become exceptions, and the
        next pull — whose knowledge lacks the dropped row's version — gets the full row."""
        if batch.residual is None or not batch.residual.any():
            return batch
        t = self._table(batch.table)
        res = batch.residual
        idx = t.lookup(batch.keys[res])
        ok = idx >= 0
        ok[ok] = (t.tags[idx[ok]] == source) & (source != 0)
        values = np.array(batch.values, dtype=np.float32, copy=True)
        rows = np.flatnonzero(res)
        values[rows[ok]] = (t.values[idx[ok]] + batch.values[rows[ok]]).astype(np.float32)
        keep = np.ones(batch.n, dtype=np.bool_)
        keep[rows[~ok]] = False
        return Batch(
            batch.table,
            batch.part,
            batch.keys[keep],
            batch.epochs[keep],
            batch.origins[keep],
            batch.seqs[keep],
            batch.publish_times[keep],
            values[keep],
            batch.classes[keep],
            batch.covered if ok.all() else EMPTY_VECTOR,
        )

    def apply(self, batch: Batch, source: int = 0) -> ApplyResult:
        """Apply rows newer than what is held, then advance the shard's knowledge. ``source``
        is the responder that sent the batch (its residual rows are resolved first, see
        :meth:`resolve`); the rows applied remember it.

        Idempotent and monotone: a row at an equal or older version is ignored, so duplicates
        and reordering are harmless.
        """
        batch = self.resolve(batch, source)
        t = self._table(batch.table)
        shard = self._shard(batch.shard)
        if batch.values.shape[1] != t.spec.dim:
            raise ValueError(
                f"batch for {batch.table!r} has dim {batch.values.shape[1]}, table has {t.spec.dim}"
            )
        if batch.n and np.any(t.spec.part_of(batch.keys) != batch.part):
            raise ValueError(f"batch for {batch.shard} holds keys of other parts")
        # Within one batch, keep only each key's newest version.
        order = np.lexsort((batch.origins, batch.seqs, batch.epochs, batch.keys))
        ks = batch.keys[order]
        last = np.ones(len(ks), dtype=np.bool_)
        last[:-1] = ks[1:] != ks[:-1]
        sel = order[last]
        keys = batch.keys[sel]
        e, o, s = batch.epochs[sel], batch.origins[sel], batch.seqs[sel]
        vals = batch.values[sel]

        idx = t.lookup(keys)
        fresh = idx < 0
        n_fresh = int(fresh.sum())
        if n_fresh:
            t.reserve(n_fresh)
            new_idx = np.arange(t.n, t.n + n_fresh, dtype=np.int64)
            idx[fresh] = new_idx
            for k, i in zip(keys[fresh].tolist(), new_idx.tolist(), strict=True):
                t.index[k] = i
            t.n += n_fresh
            t.keys[new_idx] = keys[fresh]
            t.parts[new_idx] = batch.part
            t.born_epochs[new_idx] = e[fresh]
            t.born_origins[new_idx] = o[fresh]
            t.born_seqs[new_idx] = s[fresh]
        win = fresh | newer((e, o, s), (t.epochs[idx], t.origins[idx], t.seqs[idx]))
        w = idx[win]
        if len(w):
            # The drift baseline: a row held at a version every downstream holds keeps that
            # value as its baseline before it is overwritten (a row new here starts from zero).
            at_cut = ~fresh[win] & bool(shard.downstreams)
            for k in shard.downstreams:
                at_cut &= k.covers_arrays(t.keys[w], t.epochs[w], t.origins[w], t.seqs[w])
            t.base_values[w[at_cut]] = t.values[w[at_cut]]
            t.base_values[w[fresh[win]]] = 0.0
            old = np.where(fresh[win, None], 0.0, t.values[w])
            mags = np.linalg.norm(vals[win].astype(np.float64) - old, axis=1)
            t.values[w] = vals[win]
            self._supersede(batch.table, t.tags[w], t.keys[w], source)
            t.tags[w] = source
            t.epochs[w], t.origins[w], t.seqs[w] = e[win], o[win], s[win]
            t.publish_times[w] = batch.publish_times[sel][win]
            t.magnitudes[w] = mags
            decay = (1.0 - self.magnitude_alpha) ** len(w)
            t.mean_magnitude = decay * t.mean_magnitude + (1.0 - decay) * float(mags.mean())
            for we, wo, ws in zip(e[win].tolist(), o[win].tolist(), s[win].tolist(), strict=True):
                if ws > shard.high_water.get((we, wo), 0):
                    shard.high_water[(we, wo)] = ws
            self._touch(t, shard, keys[win])
            self.changes += 1
        # Exceptions record what is held now (at least what was delivered).
        knowledge = shard.knowledge.advance(
            batch.covered,
            keys=keys,
            epochs=t.epochs[idx],
            origins=t.origins[idx],
            seqs=t.seqs[idx],
            max_exceptions=self.max_exceptions,
        )
        if knowledge != shard.knowledge:
            shard.knowledge = knowledge
            self.changes += 1
        return ApplyResult(
            batch.shard,
            len(w),
            batch.n - len(w),
            keys[win],
            s[win],
            batch.publish_times[sel][win],
            batch.classes[sel][win],
            e[win],
            o[win],
        )

    def _touch(self, t: _Table, shard: _Shard, keys: I64) -> None:
        cache = shard.cache
        for k in keys.tolist():
            if k in cache:
                cache.move_to_end(k)
            else:
                cache[k] = None
        while len(cache) > self.cache_capacity:
            evicted, _ = cache.popitem(last=False)
            i = t.index[evicted]
            src = (int(t.epochs[i]), int(t.origins[i]))
            if int(t.seqs[i]) > shard.floor.get(src, 0):
                shard.floor[src] = int(t.seqs[i])

    def write(
        self,
        table: str,
        keys: npt.ArrayLike,
        values: npt.ArrayLike,
        *,
        epoch: int,
        origin: int,
        seqs: npt.ArrayLike,
        publish_time: float,
    ) -> list[ApplyResult]:
        """The origin's own writes: apply them and vouch for them (the origin holds every write it
        made, so its knowledge of its own source is exact)."""
        spec = self._table(table).spec
        k = _i64(keys)
        s = _column(seqs, len(k))
        vals = np.asarray(values, dtype=np.float32).reshape(len(k), spec.dim)
        parts = spec.part_of(k)
        results = []
        for p in np.unique(parts).tolist():
            m = parts == p
            top = int(s[m].max())
            covered = self.knowledge((table, p)).vector.merge(
                VersionVector.of({(epoch, origin): top})
            )
            results.append(
                self.apply(
                    Batch.of(
                        table,
                        p,
                        k[m],
                        epochs=epoch,
                        origins=origin,
                        seqs=s[m],
                        publish_times=publish_time,
                        values=vals[m],
                        covered=covered,
                    )
                )
            )
        return results

    # --- read ----------------------------------------------------------------------------------

    def changes_since(self, shard: ShardId, knowledge: Knowledge) -> Candidates:
        """Rows of ``shard`` that ``knowledge`` does not cover: from the cache when the knowledge
        is at or above the cache's floor, else by a full scan (counted in ``full_scans``)."""
        table, part = shard
        t = self._table(table)
        st = self._shard(shard)
        full = False
        if self.nothing_newer(shard, knowledge):
            rows = np.zeros(0, dtype=np.int64)
        elif _dominates(knowledge.vector, st.floor):
            rows = t.lookup(_i64(list(st.cache)))
        else:
            full = True
            self.full_scans += 1
            rows = np.flatnonzero(t.parts[: t.n] == part).astype(np.int64)
        if len(rows):
            held = knowledge.covers_arrays(
                t.keys[rows], t.epochs[rows], t.origins[rows], t.seqs[rows]
            )
            rows = rows[~held]
        new = ~knowledge.covers_arrays(
            t.keys[rows], t.born_epochs[rows], t.born_origins[rows], t.born_seqs[rows]
        )
        return Candidates(
            table,
            part,
            rows,
            t.keys[rows],
            t.epochs[rows],
            t.origins[rows],
            t.seqs[rows],
            t.publish_times[rows],
            t.magnitudes[rows],
            new,
            full,
            np.linalg.norm(t.values[rows].astype(np.float64) - t.base_values[rows], axis=1).astype(
                np.float64
            ),
            (t.born_epochs[rows], t.born_origins[rows], t.born_seqs[rows]),
        )

    def row_values(self, table: str, rows: npt.ArrayLike) -> F32:
        t = self._table(table)
        out: F32 = t.values[_i64(rows)]
        return out

    def mean_magnitude(self, table: str) -> float:
        return self._table(table).mean_magnitude

    def n_rows(self, table: str) -> int:
        return self._table(table).n

    def get(self, table: str, keys: npt.ArrayLike) -> tuple[F32, Bools]:
        """Values of ``keys`` (zeros where absent) and which were found."""
        t = self._table(table)
        idx = t.lookup(_i64(keys))
        found = idx >= 0
        out = np.zeros((len(idx), t.spec.dim), dtype=np.float32)
        out[found] = t.values[idx[found]]
        return out, found

    def dense(self, table: str) -> F32:
        """A dense tensor reassembled from its chunks (missing chunks read as zeros)."""
        spec = self._table(table).spec
        if spec.kind != "dense":
            raise ValueError(f"table {table!r} is not dense")
        vals, _ = self.get(table, np.arange(spec.n_chunks))
        size = int(np.prod(spec.shape))
        out: F32 = vals.reshape(-1)[:size].reshape(spec.shape)
        return out

    def snapshot(self, table: str) -> TableSnapshot:
        t = self._table(table)
        order = np.argsort(t.keys[: t.n], kind="stable")
        return TableSnapshot(
            t.spec,
            t.keys[order].copy(),
            t.epochs[order].copy(),
            t.origins[order].copy(),
            t.seqs[order].copy(),
            t.publish_times[order].copy(),
            t.values[order].copy(),
        )

    def same_state(self, other: Store) -> bool:
        """Same tables with the same rows, versions and values."""
        if {s.name for s in self.specs()} != {s.name for s in other.specs()}:
            return False
        return all(self.snapshot(n).same_rows(other.snapshot(n)) for n in self._tables)

    # --- persistence (a node restarts from its knowledge) --------------------------------------

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Everything needed to restart: rows, versions and knowledge, as named numpy arrays
        (``numpy.savez`` them). The cache is not saved: a restarted store's floor is its
        knowledge, so a pull from below it is a full scan, which is correct."""
        out: dict[str, npt.NDArray[np.generic]] = {}
        specs = []
        for ti, t in enumerate(self._tables.values()):
            s = t.spec
            specs.append([s.name, s.dim, s.kind, s.shards, s.model, s.weight, list(s.shape)])
            n = t.n
            for name in _Table._COLUMNS:
                out[f"t{ti}.{name}"] = getattr(t, name)[:n].copy()
            for p, sh in enumerate(t.shards):
                k = sh.knowledge
                out[f"t{ti}.{p}.vector"] = np.array(k.vector.entries, dtype=np.int64).reshape(-1, 3)
                out[f"t{ti}.{p}.exc"] = np.stack(
                    [k.exc_keys, k.exc_epochs, k.exc_origins, k.exc_seqs]
                )
                out[f"t{ti}.{p}.hw"] = np.array(
                    [(e, o, q) for (e, o), q in sh.high_water.items()], dtype=np.int64
                ).reshape(-1, 3)
        out["specs"] = np.frombuffer(json.dumps(specs).encode(), dtype=np.uint8).copy()
        out["mean_magnitudes"] = np.array([t.mean_magnitude for t in self._tables.values()])
        return out

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, npt.NDArray[np.generic]],
        *,
        cache_capacity: int = 65536,
        max_exceptions: int = DEFAULT_MAX_EXCEPTIONS,
    ) -> Store:
        """The store :meth:`to_arrays` saved."""
        store = cls(cache_capacity=cache_capacity, max_exceptions=max_exceptions)
        specs = json.loads(bytes(np.asarray(arrays["specs"], dtype=np.uint8)).decode())
        for ti, (name, dim, kind, shards, model, weight, shape) in enumerate(specs):
            spec = TableSpec(name, int(dim), kind, int(shards), model, float(weight), tuple(shape))
            store.declare(spec)
            t = store._tables[name]
            n = len(arrays[f"t{ti}.keys"])
            t.reserve(n)
            for col in _Table._COLUMNS:
                # Files saved before the drift baseline existed: the baseline is the value.
                src = col if f"t{ti}.{col}" in arrays or col != "base_values" else "values"
                getattr(t, col)[:n] = arrays[f"t{ti}.{src}"]
            t.n = n
            t.index = {k: i for i, k in enumerate(t.keys[:n].tolist())}
            t.mean_magnitude = float(arrays["mean_magnitudes"][ti])
            for p, sh in enumerate(t.shards):
                vec = VersionVector.of(
                    {(int(e), int(o)): int(q) for e, o, q in arrays[f"t{ti}.{p}.vector"]}
                )
                exc = arrays[f"t{ti}.{p}.exc"]
                sh.knowledge = Knowledge(vec, exc[0], exc[1], exc[2], exc[3])
                sh.high_water = {(int(e), int(o)): int(q) for e, o, q in arrays[f"t{ti}.{p}.hw"]}
                # Nothing is cached: every row is at or below the floor, so a pull from below
                # the high water mark is answered by a full scan.
                sh.floor = dict(sh.high_water)
        return store


__all__: Sequence[str] = (
    "ROW_OVERHEAD_BYTES",
    "VALUE_DTYPES",
    "ApplyResult",
    "Batch",
    "Candidates",
    "PullRequest",
    "PullResponse",
    "ShardId",
    "Store",
    "TableKind",
    "TableSnapshot",
    "TableSpec",
    "ValueDType",
    "catalogue_id",
    "row_wire_bytes",
)
