"""Versions, version vectors and knowledge: the lattice laws and the covering rules."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ekko.updates.versions import Knowledge, Version, VersionVector, newer

sources = st.tuples(st.integers(0, 2), st.integers(0, 3))
vectors = st.dictionaries(sources, st.integers(0, 20), max_size=6).map(VersionVector.of)
versions = st.builds(Version, st.integers(0, 2), st.integers(0, 3), st.integers(1, 20))
knowledges = st.builds(
    Knowledge.build, vectors, st.lists(st.tuples(st.integers(0, 30), versions), max_size=12)
)


def test_versions_order_by_epoch_then_seq_then_origin() -> None:
    assert Version(1, 0, 1) > Version(0, 9, 99)
    assert Version(0, 0, 5) > Version(0, 9, 4)
    assert Version(0, 2, 5) > Version(0, 1, 5)
    mask = newer(
        ([1, 0, 0, 0], [0, 0, 2, 1], [1, 5, 5, 5]), ([0, 0, 0, 0], [9, 9, 1, 1], [99, 4, 5, 5])
    )
    assert mask.tolist() == [True, True, True, False]


def test_vector_covers_and_digest() -> None:
    v = VersionVector.of({(0, 1): 5, (0, 2): 0})
    assert v.entries == ((0, 1, 5),)
    assert v.covers(Version(0, 1, 5)) and not v.covers(Version(0, 1, 6))
    assert not v.covers(Version(1, 1, 1))
    assert v.digest() == VersionVector.of({(0, 1): 5}).digest()
    assert v.digest() != VersionVector.of({(0, 1): 6}).digest()


def test_knowledge_exceptions_cover_older_versions_of_their_key() -> None:
    k = Knowledge.build({(0, 1): 3}, [(7, Version(0, 1, 9))])
    assert k.covers(7, Version(0, 1, 9)) and k.covers(7, Version(0, 2, 8))
    assert not k.covers(7, Version(0, 1, 10)) and not k.covers(8, Version(0, 1, 9))
    assert k.covers(8, Version(0, 1, 3))


def test_advance_folds_exceptions_the_vector_reaches() -> None:
    k = Knowledge.build({(0, 1): 3}, [(7, Version(0, 1, 9)), (8, Version(0, 1, 5))])
    k2 = k.advance(VersionVector.of({(0, 1): 6}), keys=[9], epochs=[0], origins=[1], seqs=[12])
    assert k2.vector.get(0, 1) == 6
    assert set(k2.exceptions()) == {7, 9}


def test_exception_cap_drops_the_oldest() -> None:
    k = Knowledge.build({}, [(i, Version(0, 1, 10 + i)) for i in range(10)]).folded(4)
    assert sorted(k.exceptions()) == [6, 7, 8, 9]


@settings(max_examples=150, deadline=None)
@given(vectors, vectors, vectors)
def test_vector_merge_is_a_join(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    m = a.merge(b)
    assert m.dominates(a) and m.dominates(b)
    # The least upper bound: anything above both is above the merge.
    if c.dominates(a) and c.dominates(b):
        assert c.dominates(m)


@settings(max_examples=150, deadline=None)
@given(vectors, vectors, vectors)
def test_vector_dominates_is_a_partial_order(
    a: VersionVector, b: VersionVector, c: VersionVector
) -> None:
    assert a.dominates(a)
    if a.dominates(b) and b.dominates(a):
        assert a == b
    if a.dominates(b) and b.dominates(c):
        assert a.dominates(c)


@settings(max_examples=100, deadline=None)
@given(knowledges, knowledges, knowledges)
def test_knowledge_merge_laws(a: Knowledge, b: Knowledge, c: Knowledge) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    m = a.merge(b)
    assert m.dominates(a) and m.dominates(b)
    assert a.dominates(a)
    if a.dominates(b) and b.dominates(c):
        assert a.dominates(c)


@settings(max_examples=100, deadline=None)
@given(knowledges, st.lists(st.tuples(st.integers(0, 30), versions), max_size=20))
def test_folding_only_forgets_safely(k: Knowledge, rows: list[tuple[int, Version]]) -> None:
    """Folding may forget that a key is held at an older version of another source (a resend,
    never a loss), but never claims more, and keeps everything at or above the vector."""
    folded = k.folded()
    keys = np.array([r[0] for r in rows], dtype=np.int64)
    e = np.array([r[1].epoch for r in rows], dtype=np.int64)
    o = np.array([r[1].origin for r in rows], dtype=np.int64)
    s = np.array([r[1].seq for r in rows], dtype=np.int64)
    before, after = k.covers_arrays(keys, e, o, s), folded.covers_arrays(keys, e, o, s)
    assert not (after & ~before).any()
    assert k.dominates(folded)
    assert folded.vector == k.vector
    for key, v in k.exceptions().items():
        assert folded.covers(key, v)
