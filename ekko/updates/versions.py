"""Versions and knowledge: what lets replicas exchange only the state the other side lacks.

Every row carries the version of the write that produced it, ``(epoch, origin, seq)``. A shard's
*knowledge* is a version vector ``{(epoch, origin): seq}`` plus an *exception set*: rows a partial,
priority-ordered response delivered beyond the vector. The vector says "for every write by
``origin`` in ``epoch`` with a sequence number up to ``seq``, I hold that row at that version or a
newer one (or a newer write of the row exists that my knowledge does not cover yet)"; an exception
``key → v`` says "I hold ``key`` at ``v`` or newer". A responder sends only rows neither covers.

Versions of one key are totally ordered by ``(epoch, seq, origin)`` — epoch first (a rollback bumps
it and fences older rows), then the writer's sequence number (origins draw them from a clock, so
concurrent writers resolve last-writer-wins), then the origin id as a tie-break. Note that this is
*not* the field order of :class:`Version`; compare with :meth:`Version.sort_key` or the array helper
:func:`newer`.

Everything here is pure and numpy-friendly: many rows are checked at once with
:meth:`Knowledge.covers_arrays`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import total_ordering

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

Source = tuple[int, int]
"""``(epoch, origin)``: one writer's sequence of writes within one epoch."""

DEFAULT_MAX_EXCEPTIONS = 1 << 16
"""Exceptions kept per shard. Dropping one is safe (the row may be sent again), so the cap only
bounds the size of a pull request."""


@total_ordering
@dataclass(frozen=True, slots=True)
class Version:
    """The version of one row: who wrote it (``origin``), in which ``epoch``, with which ``seq``."""

    epoch: int
    origin: int
    seq: int

    def sort_key(self) -> tuple[int, int, int]:
        """The key versions of the same row are ordered by: ``(epoch, seq, origin)``."""
        return (self.epoch, self.seq, self.origin)

    @property
    def source(self) -> Source:
        return (self.epoch, self.origin)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key() < other.sort_key()


VersionArrays = tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]
"""``(epochs, origins, seqs)`` of many rows."""


def newer(a: VersionArrays, b: VersionArrays) -> Bools:
    """Element-wise ``a > b`` for versions given as ``(epochs, origins, seqs)`` arrays, in the
    ``(epoch, seq, origin)`` order."""
    a_e, a_o, a_s = (np.asarray(x) for x in a)
    b_e, b_o, b_s = (np.asarray(x) for x in b)
    same_e = a_e == b_e
    result: Bools = (a_e > b_e) | (same_e & ((a_s > b_s) | ((a_s == b_s) & (a_o > b_o))))
    return result


def _i64(values: npt.ArrayLike) -> I64:
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64).reshape(-1))


@dataclass(frozen=True, slots=True)
class VersionVector:
    """An immutable map ``(epoch, origin) → seq``; absent sources read as 0 (nothing known).

    Build one with :meth:`of`; ``entries`` is sorted and holds only positive seqs, so equal vectors
    compare equal.
    """

    entries: tuple[tuple[int, int, int], ...] = ()
    _map: dict[Source, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for e, o, s in self.entries:
            self._map[(e, o)] = s

    @classmethod
    def of(cls, mapping: Mapping[Source, int] | Iterable[tuple[Source, int]]) -> VersionVector:
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        best: dict[Source, int] = {}
        for (e, o), s in items:
            if s > best.get((e, o), 0):
                best[(int(e), int(o))] = int(s)
        return cls(tuple(sorted((e, o, s) for (e, o), s in best.items())))

    def get(self, epoch: int, origin: int) -> int:
        return self._map.get((epoch, origin), 0)

    def as_dict(self) -> dict[Source, int]:
        return dict(self._map)

    def sources(self) -> list[Source]:
        return [(e, o) for e, o, _ in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def covers(self, version: Version) -> bool:
        return version.seq <= self.get(version.epoch, version.origin)

    def covers_arrays(
        self, epochs: npt.ArrayLike, origins: npt.ArrayLike, seqs: npt.ArrayLike
    ) -> Bools:
        """Element-wise :meth:`covers` for rows given as arrays."""
        e, o, s = _i64(epochs), _i64(origins), _i64(seqs)
        out = np.zeros(len(s), dtype=np.bool_)
        for ve, vo, vs in self.entries:
            out |= (e == ve) & (o == vo) & (s <= vs)
        return out

    def merge(self, other: VersionVector) -> VersionVector:
        """The pointwise maximum (the join of the lattice)."""
        if not other.entries:
            return self
        if not self.entries:
            return other
        merged = dict(self._map)
        for e, o, s in other.entries:
            if s > merged.get((e, o), 0):
                merged[(e, o)] = s
        return VersionVector.of(merged)

    def dominates(self, other: VersionVector) -> bool:
        """True when every source is at least as far along here as in ``other``."""
        return all(s <= self.get(e, o) for e, o, s in other.entries)

    def digest(self) -> int:
        """A 64-bit fingerprint: equal vectors give equal digests, so an unchanged shard is cheap
        to recognise."""
        h = hashlib.blake2b(digest_size=8)
        for e, o, s in self.entries:
            h.update(struct.pack("<qqq", e, o, s))
        return int.from_bytes(h.digest(), "little")


EMPTY_VECTOR = VersionVector()


def _per_key_max(keys: I64, epochs: I64, origins: I64, seqs: I64) -> tuple[I64, I64, I64, I64]:
    """Keep, for every key, only its newest version; the result is sorted by key."""
    if len(keys) == 0:
        return keys, epochs, origins, seqs
    order = np.lexsort((origins, seqs, epochs, keys))
    k, e, o, s = keys[order], epochs[order], origins[order], seqs[order]
    last = np.ones(len(k), dtype=np.bool_)
    last[:-1] = k[1:] != k[:-1]
    return k[last], e[last], o[last], s[last]


_EMPTY_I64: I64 = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Knowledge:
    """What one replica of one shard holds: a version vector plus the exception set.

    ``exc_*`` are parallel arrays sorted by key, one (newest) version per key. Instances are
    immutable (the arrays are made read-only); every operation returns a new one.
    """

    vector: VersionVector = EMPTY_VECTOR
    exc_keys: I64 = field(default_factory=lambda: _EMPTY_I64)
    exc_epochs: I64 = field(default_factory=lambda: _EMPTY_I64)
    exc_origins: I64 = field(default_factory=lambda: _EMPTY_I64)
    exc_seqs: I64 = field(default_factory=lambda: _EMPTY_I64)

    def __post_init__(self) -> None:
        n = len(self.exc_keys)
        if not (len(self.exc_epochs) == len(self.exc_origins) == len(self.exc_seqs) == n):
            raise ValueError("exception arrays must have equal lengths")
        for name in ("exc_keys", "exc_epochs", "exc_origins", "exc_seqs"):
            arr = _i64(getattr(self, name))
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    @classmethod
    def build(
        cls,
        vector: VersionVector | Mapping[Source, int] = EMPTY_VECTOR,
        exceptions: Iterable[tuple[int, Version]] = (),
    ) -> Knowledge:
        """Knowledge from a vector and ``(key, version)`` exceptions (normalised, not folded)."""
        vec = vector if isinstance(vector, VersionVector) else VersionVector.of(vector)
        exc = list(exceptions)
        k = _i64([key for key, _ in exc])
        e = _i64([v.epoch for _, v in exc])
        o = _i64([v.origin for _, v in exc])
        s = _i64([v.seq for _, v in exc])
        return cls(vec, *_per_key_max(k, e, o, s))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Knowledge):
            return NotImplemented
        return (
            self.vector == other.vector
            and np.array_equal(self.exc_keys, other.exc_keys)
            and np.array_equal(self.exc_epochs, other.exc_epochs)
            and np.array_equal(self.exc_origins, other.exc_origins)
            and np.array_equal(self.exc_seqs, other.exc_seqs)
        )

    def __hash__(self) -> int:
        return hash((self.vector.entries, self.exc_keys.tobytes(), self.exc_seqs.tobytes()))

    @property
    def n_exceptions(self) -> int:
        return len(self.exc_keys)

    def exceptions(self) -> dict[int, Version]:
        return {
            int(k): Version(int(e), int(o), int(s))
            for k, e, o, s in zip(
                self.exc_keys, self.exc_epochs, self.exc_origins, self.exc_seqs, strict=True
            )
        }

    def covers(self, key: int, version: Version) -> bool:
        mask = self.covers_arrays([key], [version.epoch], [version.origin], [version.seq])
        return bool(mask[0])

    def covers_arrays(
        self,
        keys: npt.ArrayLike,
        epochs: npt.ArrayLike,
        origins: npt.ArrayLike,
        seqs: npt.ArrayLike,
    ) -> Bools:
        """Element-wise: is row ``keys[i]`` at version ``(epochs[i], origins[i], seqs[i])`` already
        held by this replica (by the vector, or by an exception at that version or newer)?"""
        k, e, o, s = _i64(keys), _i64(epochs), _i64(origins), _i64(seqs)
        out = self.vector.covers_arrays(e, o, s)
        if len(self.exc_keys) and len(k):
            idx = np.searchsorted(self.exc_keys, k)
            idx_c = np.minimum(idx, len(self.exc_keys) - 1)
            found = self.exc_keys[idx_c] == k
            held_newer = ~newer(
                (e, o, s), (self.exc_epochs[idx_c], self.exc_origins[idx_c], self.exc_seqs[idx_c])
            )
            out |= found & held_newer
        return out

    def merge(self, other: Knowledge) -> Knowledge:
        """The join: pointwise-max vector, per-key newest exception. Commutative, associative and
        idempotent; it does not fold (see :meth:`folded`) so that those laws hold exactly."""
        if other is self:
            return self
        return Knowledge(
            self.vector.merge(other.vector),
            *_per_key_max(
                np.concatenate([self.exc_keys, other.exc_keys]),
                np.concatenate([self.exc_epochs, other.exc_epochs]),
                np.concatenate([self.exc_origins, other.exc_origins]),
                np.concatenate([self.exc_seqs, other.exc_seqs]),
            ),
        )

    def dominates(self, other: Knowledge) -> bool:
        """True when everything ``other`` covers is covered here too: a vector at least as far
        along, and for each of ``other``'s exceptions an exception of the same key at least as
        new (an exception also covers older versions from other sources, which no vector can)."""
        if not self.vector.dominates(other.vector):
            return False
        if other.n_exceptions == 0:
            return True
        if self.n_exceptions == 0:
            return False
        idx = np.searchsorted(self.exc_keys, other.exc_keys)
        idx_c = np.minimum(idx, len(self.exc_keys) - 1)
        found = self.exc_keys[idx_c] == other.exc_keys
        older = newer(
            (other.exc_epochs, other.exc_origins, other.exc_seqs),
            (self.exc_epochs[idx_c], self.exc_origins[idx_c], self.exc_seqs[idx_c]),
        )
        return bool((found & ~older).all())

    def folded(self, max_exceptions: int = DEFAULT_MAX_EXCEPTIONS) -> Knowledge:
        """Drop exceptions the vector already covers, and the oldest beyond ``max_exceptions``."""
        if self.n_exceptions == 0:
            return self
        keep = ~self.vector.covers_arrays(self.exc_epochs, self.exc_origins, self.exc_seqs)
        if int(keep.sum()) > max_exceptions:
            # Drop the oldest: the vector is most likely to reach them soon, and a dropped
            # exception costs at most one resend.
            idx = np.flatnonzero(keep)
            order = np.lexsort((self.exc_origins[idx], self.exc_seqs[idx], self.exc_epochs[idx]))
            keep[:] = False
            keep[idx[order[len(idx) - max_exceptions :]]] = True
        if keep.all():
            return self
        return Knowledge(
            self.vector,
            self.exc_keys[keep],
            self.exc_epochs[keep],
            self.exc_origins[keep],
            self.exc_seqs[keep],
        )

    def advance(
        self,
        covered: VersionVector,
        *,
        keys: npt.ArrayLike = _EMPTY_I64,
        epochs: npt.ArrayLike = _EMPTY_I64,
        origins: npt.ArrayLike = _EMPTY_I64,
        seqs: npt.ArrayLike = _EMPTY_I64,
        max_exceptions: int = DEFAULT_MAX_EXCEPTIONS,
    ) -> Knowledge:
        """After a response: raise the vector to what the responder vouched for (``covered``),
        record the rows it delivered as exceptions, and fold those the vector now covers."""
        delivered = Knowledge(
            EMPTY_VECTOR, *_per_key_max(_i64(keys), _i64(epochs), _i64(origins), _i64(seqs))
        )
        return Knowledge(covered).merge(self).merge(delivered).folded(max_exceptions)
