"""Snapshots as cuts: a view of the model at an earlier moment without a second copy of it.

A *cut* is a moment of a replica's state, named by the version vector the publisher announced
(per shard: the newest seq per source the state holds). From the moment a cut is taken, the
replica keeps, for every row it overwrites, the row's *first* pre-image after the cut (an undo
log). A view at the cut reads the undo log first, then the live table: rows not overwritten since
the cut are the same in both, so the view costs only the rows that changed (the notes measure ~3%
of parameters per hour in production).

The :class:`CutLog` wraps a :class:`~ekko.updates.store.Store` from the outside, through its public
reads and writes: the node calls :meth:`CutLog.before_apply` with each batch before
``Store.apply`` (or :meth:`CutLog.before_write` before ``Store.write``). A pre-image is recorded for
every key of the batch not logged yet; a row that then turns out not to change (a duplicate or
stale row) keeps a pre-image equal to its live value, which is harmless and costs a few bytes.

Memory is bounded: every logged row costs its value plus its key and a flag (``row_bytes``), the
total is :attr:`CutLog.bytes`, and when a record would pass ``cap_bytes`` the oldest cut is dropped
(counted in :attr:`CutLog.drops`), never the newest. A pre-image is kept once, in the log of the
newest cut when the row was first overwritten; a view at an older cut reads the logs from its cut
forward and takes the first pre-image it finds (a row unchanged between two cuts has the same
value at both), so retaining more cuts costs only the rows that changed between them.

:meth:`CutLog.restore` writes the pre-images back through ``Store.write`` at a new epoch, so they
beat every row of the old epoch; :func:`fence` then drops old-epoch rows above the cut that are
still in flight from peers (:class:`Fence`). Rows that did not exist at the cut are written as
zeros (the Store cannot delete a row; a cold key scores as a zero row anyway).

Pure: no I/O and no clock (times are passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ekko.updates.store import ApplyResult, Batch, ShardId, Store
from ekko.updates.versions import Knowledge, VersionVector

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]

KEY_BYTES = 8
FLAG_BYTES = 1

RESTORE_ORIGIN = 0x7E57
"""The origin id of rows written by a restore."""
REPLICA_RESTORE_SEQ = 1
"""Seq of the rows a replica's restore writes."""
SOURCE_RESTORE_SEQ = 2
"""Seq of the rows the publisher's restore writes: they beat a replica's own restored rows, so
every replica ends with exactly the source's state at the cut (a replica that was a few rows
behind when a row was overwritten after the cut holds an older pre-image than the cut's; it
serves that at once and takes the source's value with its next pull)."""


def row_bytes(dim: int) -> int:
    """Undo-log bytes of one row of ``dim`` float32 values (value, key and the found flag)."""
    return 4 * dim + KEY_BYTES + FLAG_BYTES


class _TableLog:
    """Pre-images of one table for one cut: growable arrays and a key → slot index."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.index: dict[int, int] = {}
        self.n = 0
        self.keys = np.zeros(16, dtype=np.int64)
        self.values = np.zeros((16, dim), dtype=np.float32)
        self.found = np.zeros(16, dtype=np.bool_)

    def missing(self, keys: I64) -> I64:
        """Keys (unique, in order) not logged yet."""
        index = self.index
        return np.fromiter(
            (k for k in dict.fromkeys(keys.tolist()) if k not in index), dtype=np.int64
        )

    def add(self, keys: I64, values: F32, found: Bools) -> None:
        need = self.n + len(keys)
        if need > len(self.keys):
            cap = max(need, 2 * len(self.keys))
            for name in ("keys", "values", "found"):
                old = getattr(self, name)
                new = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        sl = slice(self.n, need)
        self.keys[sl], self.values[sl], self.found[sl] = keys, values, found
        for i, k in enumerate(keys.tolist(), start=self.n):
            self.index[k] = i
        self.n = need

    def lookup(self, keys: I64) -> I64:
        get = self.index.get
        return np.fromiter((get(k, -1) for k in keys.tolist()), dtype=np.int64, count=len(keys))


@dataclass(frozen=True)
class Cut:
    """A retained cut: its id, when it was taken (seconds, passed in) and its vectors per shard."""

    id: int
    taken_at: float
    vectors: Mapping[ShardId, VersionVector] = field(default_factory=dict)


@dataclass
class _CutState:
    cut: Cut
    tables: dict[str, _TableLog] = field(default_factory=dict)
    bytes: int = 0


@dataclass(frozen=True)
class Fence:
    """After a restore at ``epoch``: rows of an older epoch are accepted only at or below the
    cut's vector of their shard (writes made before the cut that a replica had not received)."""

    epoch: int
    vectors: Mapping[ShardId, VersionVector]

    def admits(self, batch: Batch) -> Bools:
        """Which rows of ``batch`` are admitted."""
        ok: Bools = batch.epochs >= self.epoch
        vec = self.vectors.get(batch.shard)
        if vec is not None:
            ok |= vec.covers_arrays(batch.epochs, batch.origins, batch.seqs)
        return ok


def fence(batch: Batch, fence: Fence | None) -> Batch:
    """``batch`` without the rows ``fence`` rejects. What the batch vouches for (``covered``) is
    kept: the receiver then counts the fenced rows as seen and does not pull them again and again
    while its upstream has not restored yet (they would be fenced every time)."""
    if fence is None:
        return batch
    keep = fence.admits(batch)
    if keep.all():
        return batch
    # Every per-row array is cut alike: a raw (unresolved) batch keeps its residual mark, a
    # sender-side batch its base values.
    return replace(
        batch,
        keys=batch.keys[keep],
        epochs=batch.epochs[keep],
        origins=batch.origins[keep],
        seqs=batch.seqs[keep],
        publish_times=batch.publish_times[keep],
        values=batch.values[keep],
        classes=batch.classes[keep],
        base_values=None if batch.base_values is None else batch.base_values[keep],
        base_mask=None if batch.base_mask is None else batch.base_mask[keep],
        residual=None if batch.residual is None else batch.residual[keep],
    )


def max_epoch(store: Store, model: str | None = None) -> int:
    """The newest epoch any row of ``store`` carries (0 for an empty store); with ``model``, any
    row of that model's tables (epochs are per model: each stream rolls back on its own)."""
    epochs = [
        e
        for s in store.shards()
        if model is None or store.spec(s[0]).model == model
        for e, _, _ in store.high_water(s).entries
    ]
    return max(epochs, default=0)


@dataclass(frozen=True)
class RestoreResult:
    """What :meth:`CutLog.restore` did: the new epoch, the fence to apply to incoming batches,
    the rows written back per table and the store's apply results."""

    cut: Cut
    epoch: int
    fence: Fence
    rows: Mapping[str, int]
    results: tuple[ApplyResult, ...]


class CutLog:
    """Retained cuts of one store and their undo logs, bounded by ``cap_bytes``. With ``model``
    the log covers only that model's tables (``TableSpec.model``): its cuts are named by those
    tables' vectors, it records only their pre-images, and a restore writes back only them at an
    epoch judged against them alone; other tables pass through untouched. Without, every table."""

    def __init__(self, cap_bytes: int = 256 << 20, model: str | None = None) -> None:
        if cap_bytes < 0:
            raise ValueError("cap_bytes must be non-negative")
        self.cap_bytes = cap_bytes
        self.model = model
        self._cuts: dict[int, _CutState] = {}
        self.bytes = 0
        """Bytes held by every retained cut's undo log (a gauge)."""
        self.drops = 0
        """Cuts dropped because the cap was hit (a counter)."""
        self.peak_bytes = 0

    def covers(self, store: Store, table: str) -> bool:
        """Whether ``table`` is one of this log's tables."""
        return store.has_table(table) and (
            self.model is None or store.spec(table).model == self.model
        )

    # --- cuts ----------------------------------------------------------------------------------

    def take(
        self,
        store: Store,
        cut_id: int,
        now: float,
        vectors: Mapping[ShardId, VersionVector] | None = None,
    ) -> Cut:
        """Start a cut at the store's current state. ``vectors`` is what the publisher announced;
        by default the store's high-water vectors (what the state holds). Ids must increase."""
        if self._cuts and cut_id <= max(self._cuts):
            raise ValueError(f"cut {cut_id} is not newer than cut {max(self._cuts)}")
        vecs = (
            dict(vectors)
            if vectors is not None
            else {s: store.high_water(s) for s in store.shards()}
        )
        if self.model is not None:  # another model's shards name nothing of this log's state
            vecs = {s: v for s, v in vecs.items() if self.covers(store, s[0])}
        cut = Cut(cut_id, now, vecs)
        self._cuts[cut_id] = _CutState(cut)
        return cut

    def cuts(self) -> tuple[Cut, ...]:
        """Retained cuts, oldest first."""
        return tuple(self._cuts[i].cut for i in sorted(self._cuts))

    def cut(self, cut_id: int) -> Cut:
        return self._state(cut_id).cut

    def has(self, cut_id: int) -> bool:
        return cut_id in self._cuts

    def cut_bytes(self, cut_id: int) -> int:
        return self._state(cut_id).bytes

    def drop(self, cut_id: int) -> None:
        """Forget a cut (a person or the baseline policy no longer needs it). The pre-images an
        older cut still reads through it move to the next older cut's log."""
        st = self._cuts.pop(cut_id, None)
        if st is None:
            return
        self.bytes -= st.bytes
        older = [i for i in self._cuts if i < cut_id]
        if not older:
            return
        prev = self._cuts[max(older)]
        for table, tlog in st.tables.items():
            plog = prev.tables.get(table)
            if plog is None:
                plog = prev.tables[table] = _TableLog(tlog.dim)
            keys = tlog.keys[: tlog.n]
            move = plog.lookup(keys) < 0
            if move.any():
                plog.add(keys[move], tlog.values[: tlog.n][move], tlog.found[: tlog.n][move])
                cost = row_bytes(tlog.dim) * int(move.sum())
                prev.bytes += cost
                self.bytes += cost

    def _drop_oldest(self) -> None:
        st = self._cuts.pop(min(self._cuts))
        self.bytes -= st.bytes

    def _state(self, cut_id: int) -> _CutState:
        try:
            return self._cuts[cut_id]
        except KeyError:
            raise KeyError(f"no retained cut {cut_id}") from None

    # --- recording -----------------------------------------------------------------------------

    def before_apply(self, store: Store, batch: Batch) -> None:
        """Record pre-images of the rows ``batch`` may overwrite (call before ``store.apply``).

        A row a cut's vector covers belongs to that cut's state even when it arrives after the
        cut was taken (a replica a few rows behind the publisher's announcement): its pre-image
        goes to the newest cut that does *not* cover it, or nowhere when every cut covers it. So
        replicas that took the same announced cut at different moments view and restore the same
        state, the publisher's at the cut."""
        if not self._cuts or batch.n == 0 or not self.covers(store, batch.table):
            return
        # Every key of the batch, even one the shard's knowledge covers: a covered version may
        # still be newer than the held one (knowledge vouches for writes, not for each row).
        ids = sorted(self._cuts)
        shard = batch.shard
        not_covering = np.zeros(batch.n, dtype=np.int64)
        for cid in ids:  # vectors grow with the cut id: the cuts not covering a row are a prefix
            vec = self._cuts[cid].cut.vectors.get(shard)
            covered = (
                vec.covers_arrays(batch.epochs, batch.origins, batch.seqs)
                if vec is not None
                else np.zeros(batch.n, dtype=np.bool_)
            )
            not_covering += ~covered
        for pos in np.unique(not_covering):
            if pos == 0:
                continue  # every cut holds this row already: nothing to undo
            rows = not_covering == pos
            self.before_write(store, batch.table, batch.keys[rows], cut_id=ids[int(pos) - 1])

    def before_write(
        self, store: Store, table: str, keys: npt.ArrayLike, cut_id: int | None = None
    ) -> None:
        """Record pre-images of ``keys`` of ``table`` (call before ``store.write``) in the log of
        ``cut_id`` (default: the newest cut).

        A row unchanged since an older cut has the same value at both, so a view at an older
        cut reads the logs from its own cut forward and takes the first pre-image it finds (each
        pre-image is kept once, not once per cut): a key already logged at ``cut_id`` or a newer
        cut is not logged again (its value at ``cut_id`` is that pre-image, or live)."""
        if not self._cuts or not self.covers(store, table):
            return
        k = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(k) == 0:
            return
        dim = store.spec(table).dim
        target = max(self._cuts) if cut_id is None else cut_id
        if target not in self._cuts:
            return
        new = np.fromiter(dict.fromkeys(k.tolist()), dtype=np.int64)
        for cid in sorted(i for i in self._cuts if i >= target):
            tlog = self._cuts[cid].tables.get(table)
            if tlog is not None and len(new):
                new = tlog.missing(new)
        if len(new) == 0:
            return
        cost = row_bytes(dim) * len(new)
        # The cap: drop the oldest cuts until this record fits; when the target itself cannot
        # hold it, it is dropped too (it could not give a complete view).
        while self.bytes + cost > self.cap_bytes and self._cuts:
            oldest = min(self._cuts)
            self._drop_oldest()
            self.drops += 1
            if oldest == target:
                return
        st = self._cuts[target]
        tlog = st.tables.get(table)
        if tlog is None:
            tlog = st.tables[table] = _TableLog(dim)
        values, found = store.get(table, new)
        tlog.add(new, values, found)
        st.bytes += cost
        self.bytes += cost
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    # --- reading -------------------------------------------------------------------------------

    def view(self, store: Store, cut_id: int) -> CutView:
        """The store as it was at cut ``cut_id``."""
        self._state(cut_id)
        chain = [self._cuts[i] for i in sorted(self._cuts) if i >= cut_id]
        return CutView(store, chain)

    # --- restoring -----------------------------------------------------------------------------

    def restore(
        self,
        store: Store,
        cut_id: int,
        *,
        now: float,
        epoch: int | None = None,
        origin: int = RESTORE_ORIGIN,
        seq: int = REPLICA_RESTORE_SEQ,
    ) -> RestoreResult:
        """Write the cut's pre-images back at a new ``epoch`` (default: one past the store's
        newest; it must be above the cut's epoch and not below the store's newest) and return
        the fence for incoming batches. Cuts newer than ``cut_id`` are
        dropped (they saw the state being undone); the cut itself is kept with an empty log, as
        the live state now is its state."""
        st = self._state(cut_id)
        newest = max_epoch(store, self.model)
        new_epoch = newest + 1 if epoch is None else epoch
        at_cut = max((e for v in st.cut.vectors.values() for e, _, _ in v.entries), default=0)
        # The new epoch must beat every row written since the cut (so it fences the cut's epoch)
        # and not lose to rows already held. Equal to the newest is fine: those rows are of the
        # new epoch already (an upstream restored first and this replica pulled its rows).
        if new_epoch < newest or new_epoch <= at_cut:
            raise ValueError(
                f"epoch {new_epoch} does not fence epoch {max(newest, at_cut)} "
                f"(rows of epoch {newest} are held; the cut is at epoch {at_cut})"
            )
        view = self.view(store, cut_id)
        tables: dict[str, list[I64]] = {}
        for later in view.chain:
            for table, tlog in later.tables.items():
                tables.setdefault(table, []).append(tlog.keys[: tlog.n])
        writes = []
        for table, parts in tables.items():
            keys = np.unique(np.concatenate(parts))
            if len(keys):
                values, _ = view.get(table, keys)  # absent at the cut: zeros
                writes.append((table, keys, values))
        # The cut becomes the newest, with an empty log: the live state is its state from now on
        # (older cuts read through live for the rows the dropped logs held, and live now holds
        # exactly those values).
        for newer_id in [i for i in self._cuts if i > cut_id]:
            st_newer = self._cuts.pop(newer_id)
            self.bytes -= st_newer.bytes
        self.bytes -= st.bytes
        self._cuts[cut_id] = _CutState(st.cut)
        rows: dict[str, int] = {}
        results: list[ApplyResult] = []
        for table, keys, values in writes:
            results.extend(
                store.write(
                    table, keys, values, epoch=new_epoch, origin=origin, seqs=seq, publish_time=now
                )
            )
            rows[table] = len(keys)
        return RestoreResult(
            st.cut, new_epoch, Fence(new_epoch, st.cut.vectors), rows, tuple(results)
        )


class ModelCuts:
    """The cut logs of one store, one per model, and each one's fence after a restore.

    Two update streams whose models share a server share its store; each stream's model-state
    manager takes its own cuts (ids numbered by that manager) and rolls back its own model: a
    restore of one model writes only that model's tables at that model's next epoch and fences
    only its rows, so another model's state, epoch and in-flight rows are never touched. The log
    of ``model=None`` (a cut or restore that names no model) covers every table, as a node with
    one model needs."""

    def __init__(self, cap_bytes: int = 256 << 20) -> None:
        self._cap = cap_bytes
        self._logs: dict[str | None, CutLog] = {}
        self._fences: dict[str | None, Fence] = {}

    @property
    def cap_bytes(self) -> int:
        """The cap of each model's log."""
        return self._cap

    @cap_bytes.setter
    def cap_bytes(self, value: int) -> None:
        self._cap = value
        for log in self._logs.values():
            log.cap_bytes = value

    @property
    def bytes(self) -> int:
        return sum(log.bytes for log in self._logs.values())

    def log(self, model: str | None) -> CutLog:
        """The log of ``model`` (created empty on first use)."""
        found = self._logs.get(model)
        if found is None:
            found = self._logs[model] = CutLog(self._cap, model)
        return found

    def of(self, model: str) -> CutLog:
        """The log ``model``'s cuts are in: its own, else one covering every table, else its own
        (empty)."""
        if model in self._logs:
            return self._logs[model]
        return self._logs[None] if None in self._logs else self.log(model)

    def fence(self, store: Store, batch: Batch) -> Batch:
        """``batch`` without the rows a restore of its model (or of every table) fences off."""
        if not self._fences or not store.has_table(batch.table):
            return batch
        out = fence(batch, self._fences.get(None))
        return fence(out, self._fences.get(store.spec(batch.table).model))

    def before_apply(self, store: Store, batch: Batch) -> None:
        for log in self._logs.values():
            log.before_apply(store, batch)

    def before_write(self, store: Store, table: str, keys: npt.ArrayLike) -> None:
        for log in self._logs.values():
            log.before_write(store, table, keys)

    def restore(
        self,
        store: Store,
        cut_id: int,
        *,
        model: str | None,
        now: float,
        epoch: int | None = None,
        origin: int = RESTORE_ORIGIN,
        seq: int = REPLICA_RESTORE_SEQ,
    ) -> RestoreResult:
        """Restore ``model``'s log to its cut ``cut_id`` and fence that model's rows (KeyError
        when the log does not hold the cut; ValueError as :meth:`CutLog.restore`)."""
        log = self._logs.get(model)
        if log is None:
            raise KeyError(f"no retained cut {cut_id}" + (f" of model {model}" if model else ""))
        result = log.restore(store, cut_id, now=now, epoch=epoch, origin=origin, seq=seq)
        self._fences[model] = result.fence
        return result


class CutView:
    """Reads of a store as it was at a cut: the undo logs from the cut forward (the first
    pre-image found wins), then the live table."""

    def __init__(self, store: Store, chain: Sequence[_CutState]) -> None:
        self.store = store
        self.chain = tuple(chain)

    @property
    def cut(self) -> Cut:
        return self.chain[0].cut

    def get(self, table: str, keys: npt.ArrayLike) -> tuple[F32, Bools]:
        """Values of ``keys`` at the cut (zeros where absent) and which were present."""
        k = np.asarray(keys, dtype=np.int64).reshape(-1)
        values, found = self.store.get(table, k)
        todo = np.ones(len(k), dtype=np.bool_)
        for st in self.chain:
            tlog = st.tables.get(table)
            if tlog is None or tlog.n == 0:
                continue
            slot = np.full(len(k), -1, dtype=np.int64)
            slot[todo] = tlog.lookup(k[todo])
            hit = slot >= 0
            if not hit.any():
                continue
            values[hit] = tlog.values[slot[hit]]
            found[hit] = tlog.found[slot[hit]]
            todo &= ~hit
            if not todo.any():
                break
        values[~found] = 0.0
        return values, found

    def dense(self, table: str) -> F32:
        """A dense tensor at the cut, reassembled from its chunks."""
        spec = self.store.spec(table)
        if spec.kind != "dense":
            raise ValueError(f"table {table!r} is not dense")
        vals, _ = self.get(table, np.arange(spec.n_chunks))
        size = int(np.prod(spec.shape))
        out: F32 = vals.reshape(-1)[:size].reshape(spec.shape)
        return out


def knowledge_at(vectors: Iterable[Knowledge]) -> VersionVector:
    """The pointwise minimum of replicas' vectors: the newest cut every replica has reached (what
    a publisher may announce as a cut all of them can view)."""
    ks = list(vectors)
    if not ks:
        return VersionVector()
    sources = set.intersection(*(set(k.vector.sources()) for k in ks))
    return VersionVector.of({src: min(k.vector.get(*src) for k in ks) for src in sources})


def vectors_json(vectors: Mapping[ShardId, VersionVector]) -> list[dict[str, Any]]:
    """A cut's vectors as JSON: ``[{"table", "part", "vector": [[epoch, origin, seq], ...]}]``."""
    return [
        {"table": t, "part": p, "vector": [list(e) for e in v.entries]}
        for (t, p), v in sorted(vectors.items())
    ]


def vectors_from_json(raw: object) -> dict[ShardId, VersionVector]:
    """The inverse of :func:`vectors_json`; ValueError with a message when malformed. Several
    entries for one shard (several publishers' announcements) merge."""
    if not isinstance(raw, list):
        raise ValueError('"vectors" must be a list')
    out: dict[ShardId, VersionVector] = {}
    for i, item in enumerate(raw):
        try:
            shard = (str(item["table"]), int(item["part"]))
            vec = VersionVector.of({(int(e), int(o)): int(q) for e, o, q in item["vector"]})
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"vectors[{i}] must be {{table, part, vector: [[e, o, s]]}}: {err}"
            ) from None
        out[shard] = out[shard].merge(vec) if shard in out else vec
    return out


__all__: Sequence[str] = (
    "RESTORE_ORIGIN",
    "Cut",
    "CutLog",
    "CutView",
    "Fence",
    "ModelCuts",
    "RestoreResult",
    "fence",
    "knowledge_at",
    "max_epoch",
    "row_bytes",
    "vectors_from_json",
    "vectors_json",
)
