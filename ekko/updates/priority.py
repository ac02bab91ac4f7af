"""The scheduler: when a link cannot carry every changed row, send the rows that matter first.

Ekko's priority of a row is ``p = (p_g + p_u) × p_m``:

- ``p_g`` (significance): how far the row has moved since the version the downstreams hold: L2
  of the current value minus its *baseline*, the value at the newest version every live
  downstream held (the scheduler tracks what its peers hold — their requests plus what it sent
  them — and updates the baseline when it sends a row every peer then holds, and the store when
  it overwrites a row every peer held; see :meth:`~ekko.updates.store.Store.set_downstreams`) over
  the table's running mean update magnitude. A row written many times since the peer's copy
  outranks one written once, and a row that oscillated back does not (the last write's magnitude
  alone, the fallback when a store keeps no baseline, sees neither). The shared baseline is the
  *slowest* peer's copy, so for a fast peer a hot row looks far more drifted than it is; the
  scheduler therefore also remembers, per peer and table, the last ``peer_rows`` rows it sent
  (key, version, value) and measures a row against the value that peer was sent whenever the
  peer's knowledge still covers that version (exact for every row it got from this responder);
- ``p_u`` (freshness): a large constant for rows the downstream has never received (new users and
  items are useless to a server until their first row arrives);
- ``p_m``: the model's weight (its traffic share).

Rows are classed **new** (never received), **high** (priority at or above a user-set percentile,
estimated with :class:`QuantileSketch`) and **rest**, and sent in that order. Within new and high
the highest priority goes first. Within rest, the highest-scored rows go first **up to an
exception budget** (``SchedulerConfig.exception_budget`` minus the exceptions the peer already
holds), then the others in seq order: rows sent out of seq order become the peer's exceptions
(they travel in every pull request), while seq order lets the peer's version vector advance. The
budget bounds what the score-ordered part of the rest can add to the peer's exception set.
``fifo`` is the alternative policy (every row in seq order), and any :data:`PriorityFn` can
replace Ekko's formula. :meth:`Scheduler.respond` turns a :class:`~ekko.updates.store.PullRequest`
into a :class:`~ekko.updates.store.PullResponse` that never exceeds the request's byte budget.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from ekko.updates.codec import FORMAT_VERSION, held_values
from ekko.updates.store import (
    Batch,
    Candidates,
    PullRequest,
    PullResponse,
    ShardId,
    Store,
    catalogue_id,
    row_wire_bytes,
)
from ekko.updates.versions import Knowledge, VersionVector

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

NEW, HIGH, REST = 0, 1, 2
CLASS_NAMES: tuple[str, str, str] = ("new", "high", "rest")
"""Priority class names by class number (metric labels)."""

FIT_TRIES = 6
"""How often :meth:`Scheduler.respond` cuts a response again until it fits."""

NEW_BONUS = 1.0e6
"""``p_u`` of a row the downstream has never received: above any plausible significance."""

Policy = Literal["ekko", "fifo"]


class QuantileSketch:
    """A streaming quantile estimate: a fixed log-spaced histogram with exponential decay.

    Values in ``[lo, hi]`` fall into ``per_decade`` buckets per factor of ten, so a quantile is
    off by at most one bucket width (a relative error of ``10**(1/per_decade) - 1``, 5.9% at 40);
    values at or below zero have their own bucket, values beyond the range are clamped. Counts
    halve every ``half_life`` observations so the estimate follows a drifting distribution.
    """

    def __init__(
        self,
        lo: float = 1e-6,
        hi: float = 1e9,
        per_decade: int = 40,
        half_life: float = 100_000.0,
    ) -> None:
        if not 0 < lo < hi or per_decade < 1 or half_life <= 0:
            raise ValueError("need 0 < lo < hi, per_decade >= 1 and half_life > 0")
        self.lo, self.hi, self.per_decade, self.half_life = lo, hi, per_decade, half_life
        self._log_lo = math.log10(lo)
        self.n_buckets = math.ceil((math.log10(hi) - self._log_lo) * per_decade)
        self._counts = np.zeros(self.n_buckets + 1, dtype=np.float64)  # [0] is "<= 0"

    @property
    def count(self) -> float:
        """The (decayed) number of observations."""
        return float(self._counts.sum())

    def add(self, values: npt.ArrayLike) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        v = v[np.isfinite(v)]
        if len(v) == 0:
            return
        self._counts *= 0.5 ** (len(v) / self.half_life)
        bucket = np.zeros(len(v), dtype=np.int64)
        pos = v > 0
        raw = np.floor((np.log10(np.maximum(v[pos], self.lo)) - self._log_lo) * self.per_decade)
        bucket[pos] = 1 + np.clip(raw.astype(np.int64), 0, self.n_buckets - 1)
        self._counts += np.bincount(bucket, minlength=self.n_buckets + 1)

    def quantile(self, q: float) -> float:
        """The value below which a fraction ``q`` of observations lie (``inf`` when empty)."""
        total = self._counts.sum()
        if total <= 0:
            return math.inf
        target = min(max(q, 0.0), 1.0) * total
        cum = np.cumsum(self._counts)
        b = int(np.searchsorted(cum, target, side="left"))
        b = min(b, self.n_buckets)
        if b == 0:
            return 0.0
        # The bucket's geometric middle: within half a bucket of any value in it.
        return float(10 ** (self._log_lo + (b - 0.5) / self.per_decade))


@dataclass(frozen=True)
class TableContext:
    """What a priority function may know about a table besides its rows."""

    mean_magnitude: float
    weight: float
    new_bonus: float = 1.0e6
    """``p_u`` of a row the downstream has never received (:attr:`SchedulerConfig.new_bonus`)."""


PriorityFn = Callable[[Candidates, TableContext], F64]
"""Scores candidate rows; higher goes first. Must return one finite float per row."""


def ekko_priority(c: Candidates, ctx: TableContext) -> F64:
    """``(p_g + p_u) × p_m`` (see the module docstring): significance is the drift since the
    downstreams' version when the store tracks it, else the last write's magnitude."""
    sig = c.magnitudes if c.drift is None else c.drift
    p_g = sig / max(ctx.mean_magnitude, 1e-12)
    p_u = np.where(c.new, ctx.new_bonus, 0.0)
    out: F64 = (p_g + p_u) * ctx.weight
    return out


def fifo_priority(c: Candidates, ctx: TableContext) -> F64:
    """Oldest write first."""
    out: F64 = -c.seqs.astype(np.float64)
    return out


@dataclass(frozen=True)
class SchedulerConfig:
    """``policy`` orders rows; ``high_percentile`` sets the high class (rows whose priority is at
    or above that quantile of recent priorities); ``priority_fn`` replaces Ekko's formula.

    ``exception_budget`` bounds the rest-class rows a response sends by score (out of seq order):
    at most ``exception_budget`` minus the exceptions the peer's request already carries (0: the
    rest go in seq order only). ``peer_ttl`` is how many responses a downstream that stopped
    pulling still counts as live for the drift baseline.

    ``peer_rows`` bounds the rows per peer and table whose sent value is remembered for the
    per-peer significance (0: only the shared baseline; memory ``peer_rows × dim × 4`` bytes per
    peer and table, plus 40 bytes of key and version). ``new_first`` puts never-received rows in
    a class of their own before high and rest (the paper's order; the new-row lag target needs
    it); off, they keep the label new but are ordered as high or rest by their score, with
    ``new_bonus`` as ``p_u``."""

    policy: Policy = "ekko"
    high_percentile: float = 0.9
    priority_fn: PriorityFn | None = None
    exception_budget: int = 1024
    peer_ttl: int = 256
    peer_rows: int = 65536
    new_first: bool = True
    new_bonus: float = NEW_BONUS

    def __post_init__(self) -> None:
        if not 0.0 <= self.high_percentile <= 1.0:
            raise ValueError("high_percentile must lie in [0, 1]")
        if self.exception_budget < 0 or self.peer_ttl < 1:
            raise ValueError("exception_budget must be >= 0 and peer_ttl >= 1")
        if self.peer_rows < 0 or not math.isfinite(self.new_bonus) or self.new_bonus < 0:
            raise ValueError("peer_rows must be >= 0 and new_bonus finite and >= 0")


@dataclass(frozen=True, eq=False)
class Ranked:
    """Candidate rows with their scores and classes, ready for :func:`fill`."""

    scores: F64
    classes: U8
    seqs: I64
    tiers: U8 | None = None
    """The class each row is *ordered* in, when it differs from ``classes`` (the label): with
    ``new_first`` off a never-received row keeps the label new but is ordered as high or rest
    by its score."""

    @property
    def order_classes(self) -> U8:
        return self.classes if self.tiers is None else self.tiers

    @classmethod
    def concat(cls, parts: Sequence[Ranked]) -> Ranked:
        if not parts:
            return cls(np.zeros(0), np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64))
        tiers = None
        if any(p.tiers is not None for p in parts):
            tiers = np.concatenate([p.order_classes for p in parts])
        return cls(
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.classes for p in parts]),
            np.concatenate([p.seqs for p in parts]),
            tiers,
        )


def order(ranked: Ranked, policy: Policy = "ekko", rest_by_score: int = 0) -> I64:
    """Indices in sending order. ``ekko``: new, then high, then rest; by score within new and
    high; within rest, the ``rest_by_score`` highest-scored rows by score, then the others by
    seq. ``fifo``: by seq. Ties break by seq, then index (deterministic)."""
    idx = np.arange(len(ranked.seqs), dtype=np.int64)
    if policy == "fifo":
        out: I64 = np.lexsort((idx, ranked.seqs))
        return out
    classes = ranked.order_classes
    rest = classes == REST
    # Tier: 0 new, 1 high, 2 the rest sent by score (within the budget), 3 the rest by seq.
    tier = np.where(rest, 3, classes.astype(np.int64))
    if rest_by_score > 0 and rest.any():
        r_idx = np.flatnonzero(rest)
        top = r_idx[np.lexsort((r_idx, ranked.seqs[r_idx], -ranked.scores[r_idx]))]
        tier[top[:rest_by_score]] = 2
    by_seq = tier == 3
    by_score = np.where(by_seq, 0.0, -ranked.scores)
    seq_key = np.where(by_seq, ranked.seqs, 0)
    out = np.lexsort((idx, ranked.seqs, seq_key, by_score, tier))
    return out


def fill(
    ranked: Ranked,
    budget_bytes: int,
    row_bytes: int | npt.ArrayLike,
    policy: Policy = "ekko",
    rest_by_score: int = 0,
) -> I64:
    """The rows to send, in order: the longest prefix of :func:`order` whose bytes fit the
    budget. Never exceeds ``budget_bytes``; a prefix (not a knapsack) keeps the order promise —
    no row is sent while a higher one waits."""
    ordered = order(ranked, policy, rest_by_score)
    if len(ordered) == 0 or budget_bytes <= 0:
        return ordered[:0]
    per_row = np.broadcast_to(np.asarray(row_bytes, dtype=np.int64), ranked.seqs.shape)
    cum = np.cumsum(per_row[ordered])
    n = int(np.searchsorted(cum, budget_bytes, side="right"))
    return ordered[:n]


class Scheduler:
    """Ranks candidate rows and fills pull responses. Keeps the quantile sketch of priorities
    (so one scheduler per responder, shared by its downstreams)."""

    def __init__(self, config: SchedulerConfig | None = None, source: int | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.source = source if source is not None else secrets.randbits(62) | 1
        """This responder's id in frames with residual rows (random per process, so a restarted
        responder, whose memory of what it sent is empty, never matches what its peers hold)."""
        if self.source <= 0:
            raise ValueError("source must be a positive id")
        self.sketch = QuantileSketch()
        self.last_backlog: dict[str, int] = {}
        """Candidate rows left unsent by the last response to each peer (the backlog metric)."""
        self._responses = 0
        self._peers: dict[str, tuple[int, dict[ShardId, Knowledge]]] = {}
        self._sent: dict[str, dict[str, _SentRows]] = {}
        self._ratio: dict[str, float] = {}
        self._numbers = 0
        self.model_weights: dict[str, float] = {}
        """``p_m`` per model, set by the node from its duties (the operator's Fixed weight or
        traffic share); a model absent here keeps its tables' declared ``weight``."""

    def threshold(self) -> float:
        return self.sketch.quantile(self.config.high_percentile)

    def rank(self, candidates: Candidates, context: TableContext) -> Ranked:
        fn = self.config.priority_fn
        if fn is None:
            fn = fifo_priority if self.config.policy == "fifo" else ekko_priority
        scores = np.asarray(fn(candidates, context), dtype=np.float64).reshape(-1)
        if len(scores) != candidates.n:
            raise ValueError("priority function returned the wrong number of scores")
        scores = np.nan_to_num(scores, nan=0.0, posinf=np.finfo(np.float64).max)
        # The sketch learns the priorities of rows competing on their merit (not new rows).
        self.sketch.add(scores[~candidates.new])
        high = scores >= self.threshold()
        merit = np.where(high, HIGH, REST).astype(np.uint8)
        classes = np.where(candidates.new, NEW, merit).astype(np.uint8)
        if self.config.new_first or self.config.policy == "fifo":
            return Ranked(scores, classes, candidates.seqs)
        return Ranked(scores, classes, candidates.seqs, merit)

    def respond(
        self,
        store: Store,
        request: PullRequest,
        fits: Callable[[PullResponse], bool] | None = None,
    ) -> PullResponse:
        """Choose what one pull carries: every shard's candidates, ranked and cut to the budget,
        with what the response vouches for per shard (see :class:`~ekko.updates.store.Batch`).

        With ``fits`` (e.g. "its encoded frame is within the link's tokens"), a response that
        does not fit is cut again to a smaller budget, up to :data:`FIT_TRIES` times; the
        scheduler's own bookkeeping (what each peer holds, the drift baselines) records only
        the response returned."""
        cands: list[Candidates] = []
        ranks: list[Ranked] = []
        row_bytes: list[I64] = []
        idle: list[tuple[ShardId, Knowledge]] = []
        peer_held = self._track_peer(store, request)
        self._acknowledged(request)
        self._superseded(request)
        for shard in store.shards():
            spec = store.spec(shard[0])
            if request.models and spec.model and spec.model not in request.models:
                continue  # the puller asked for other models' tables only (unowned: for all)
            k = request.knowledge.get(shard, Knowledge())
            if store.nothing_newer(shard, k):
                idle.append((shard, k))
                continue
            c = self._peer_drift(_peer_key(request), store, store.changes_since(shard, k), k)
            weight = self.model_weights.get(spec.model, spec.weight)
            ctx = TableContext(store.mean_magnitude(shard[0]), weight, self.config.new_bonus)
            cands.append(c)
            ranks.append(self.rank(c, ctx))
            row_bytes.append(np.full(c.n, row_wire_bytes(spec.dim, request.dtype), dtype=np.int64))
        ranked = Ranked.concat(ranks)
        sizes = np.concatenate(row_bytes) if row_bytes else np.zeros(0, dtype=np.int64)
        held = sum(k.n_exceptions for k in request.knowledge.values())
        budget = request.budget_bytes
        for attempt in range(FIT_TRIES + 1):
            chosen = fill(
                ranked,
                budget,
                sizes,
                self.config.policy,
                max(0, self.config.exception_budget - held),
            )
            response, commits = self._build(
                store, request, chosen, cands=cands, ranks=ranks, idle=idle
            )
            if fits is None or len(chosen) == 0 or attempt == FIT_TRIES or fits(response):
                break
            # Shrink below what this response's rows cost (so the next one is smaller).
            budget = int(sizes[chosen].sum()) * 9 // 10
        self._numbers = response.number
        for c, take, values in commits:
            self._commit(
                store, request, peer_held, c=c, take=take, held=values, number=response.number
            )
        self.last_backlog[request.peer] = response.backlog
        return response

    def respond_encoded(
        self,
        store: Store,
        request: PullRequest,
        encode: Callable[[PullResponse], bytes],
    ) -> tuple[PullResponse, bytes]:
        """:meth:`respond` with the budget in *encoded* bytes: rows are budgeted at their upper
        bound (:func:`~ekko.updates.store.row_wire_bytes`), which overstates what a compact or
        compressed frame costs (int8 + zstd frames are about half of it), so the budget is first
        scaled by this peer's observed ratio of frame bytes to upper-bound bytes, and the
        response is cut again while its frame exceeds the request's budget. Without this, a
        capped link carrying compressed frames would run at half its rate."""
        ratio = self._ratio.get(request.peer, 1.0)
        scaled = request.budget_bytes
        if scaled < (1 << 62):
            scaled = int(scaled / max(ratio, 0.05))
        frames: dict[int, bytes] = {}

        def fits(r: PullResponse) -> bool:
            frames[id(r)] = data = encode(r)
            return len(data) <= request.budget_bytes

        response = self.respond(store, replace(request, budget_bytes=scaled), fits)
        data = frames.get(id(response)) or encode(response)
        upper = sum(
            b.n * row_wire_bytes(b.values.shape[1], request.dtype) for b in response.batches
        )
        if upper > 0:
            self._ratio[request.peer] = 0.7 * ratio + 0.3 * min(1.0, len(data) / upper)
        return response, data

    def _build(
        self,
        store: Store,
        request: PullRequest,
        chosen: I64,
        *,
        cands: list[Candidates],
        ranks: list[Ranked],
        idle: list[tuple[ShardId, Knowledge]],
    ) -> tuple[PullResponse, list[tuple[Candidates, I64, F32]]]:
        """The response that sends ``chosen``, and per shard what :meth:`_commit` must record
        once it is the one returned (with the values the peer will hold).

        Residuals (frame version 3, int8): a row this scheduler sent the peer before, at a
        version the peer's knowledge covers, carries that sent value as its base; the codec
        then sends it as a residual against it where that fits."""
        n_all = sum(c.n for c in cands)
        sent = np.zeros(n_all, dtype=np.bool_)
        sent[chosen] = True
        rank_of = np.empty(n_all, dtype=np.int64)
        rank_of[chosen] = np.arange(len(chosen))
        batches: list[Batch] = []
        commits: list[tuple[Candidates, I64, F32]] = []
        version = min(request.frame_version, FORMAT_VERSION)
        residuals = request.dtype == "int8" and version >= 3 and request.puller != 0
        offset = 0
        for c, r in zip(cands, ranks, strict=True):
            mine = sent[offset : offset + c.n]
            take = np.flatnonzero(mine)
            take = take[np.argsort(rank_of[offset + take], kind="stable")]
            offset += c.n
            covered = _covered(store.knowledge((c.table, c.part)).vector, c, ~mine)
            k = request.knowledge.get((c.table, c.part), Knowledge())
            if len(take) == 0 and k.vector.dominates(covered):
                continue
            values = store.row_values(c.table, c.rows[take])
            bases = self._bases(_peer_key(request), c, take, k) if residuals and len(take) else None
            base_values, base_mask = bases if bases is not None else (None, None)
            if len(take):
                held = held_values(
                    values, request.dtype, version=version, bases=base_values, mask=base_mask
                )
                commits.append((c, take, held))
            batches.append(
                Batch(
                    c.table,
                    c.part,
                    c.keys[take],
                    c.epochs[take],
                    c.origins[take],
                    c.seqs[take],
                    c.publish_times[take],
                    values,
                    r.classes[take],
                    covered,
                    base_values=base_values,
                    base_mask=base_mask,
                )
            )
        for shard, k in idle:
            vouched = store.knowledge(shard).vector
            if not k.vector.dominates(vouched):
                empty = np.zeros(0, dtype=np.int64)
                batches.append(
                    Batch(
                        shard[0],
                        shard[1],
                        empty,
                        empty.copy(),
                        empty.copy(),
                        empty.copy(),
                        np.zeros(0),
                        np.zeros((0, store.spec(shard[0]).dim), dtype=np.float32),
                        np.zeros(0, dtype=np.uint8),
                        vouched,
                    )
                )
        backlog = n_all - len(chosen)
        number = self._numbers + 1  # taken by _commit when this response is the one returned
        specs = store.specs()
        if request.catalogue and request.catalogue == catalogue_id(specs):
            specs = ()  # the puller holds this catalogue already
        response = PullResponse(specs, tuple(batches), backlog == 0, backlog, self.source, number)
        return response, commits

    def _bases(
        self, peer: str, c: Candidates, take: I64, k: Knowledge
    ) -> tuple[F32, npt.NDArray[np.bool_]] | None:
        """The value ``peer`` holds of each row in ``take`` where it is known exactly: the last
        value this scheduler sent it, once the response that sent it is acknowledged (the peer
        applied it with every residual resolved). The peer still holds that value exactly when
        the row's tag is still this responder's (nothing else wrote it since); it checks."""
        sent = self._sent.get(peer, {}).get(c.table)
        if sent is None:
            return None
        keys = c.keys[take]
        slot = sent.lookup(keys)
        hit = slot >= 0
        hit[hit] = sent.acked[slot[hit]]
        if not hit.any():
            return None
        base = np.zeros((len(take), sent.values.shape[1]), dtype=np.float32)
        base[hit] = sent.values[slot[hit]]
        return base, hit

    def _commit(
        self,
        store: Store,
        request: PullRequest,
        peer_held: dict[ShardId, Knowledge],
        *,
        c: Candidates,
        take: I64,
        held: F32,
        number: int,
    ) -> None:
        """Record rows sent: the drift baseline of rows every live downstream now holds, the
        per-peer memory of sent values (``held``: exactly what the peer will hold, after the
        encoding's rounding), and what the peer will hold once this arrives."""
        shard = (c.table, c.part)
        keys, e, o, q = c.keys[take], c.epochs[take], c.origins[take], c.seqs[take]
        every = np.ones(len(take), dtype=np.bool_)
        for p, (_, v) in self._peers.items():
            if p != _peer_key(request):
                every &= v.get(shard, _NOTHING).covers_arrays(keys, e, o, q)
        store.rebase(c.table, c.rows[take][every])
        self._remember_sent(_peer_key(request), store, c, take, held, number=number)
        k = request.knowledge.get(shard, Knowledge())
        unsent = np.ones(c.n, dtype=np.bool_)
        unsent[take] = False
        covered = _covered(store.knowledge(shard).vector, c, unsent)
        peer_held[shard] = k.advance(
            covered, keys=keys, epochs=e, origins=o, seqs=q, max_exceptions=store.max_exceptions
        )

    def _peer_drift(self, peer: str, store: Store, c: Candidates, k: Knowledge) -> Candidates:
        """Significance against the value this peer holds, where it is known: rows this
        scheduler sent the peer (at most ``peer_rows`` per peer and table, the most recent) whose
        sent version the peer's knowledge still covers and that the peer has not reported
        overwritten since (:attr:`PullRequest.superseded`: covering a version says the peer
        holds that version *or a newer one*, e.g. from another upstream). A reported row is
        measured by its last change (the peer holds a version newer than the one sent, most
        likely a recent one). Other rows keep the store's shared baseline (the slowest live
        peer's copy), which overstates a fast peer's drift."""
        sent = self._sent.get(peer, {}).get(c.table)
        if sent is None or c.n == 0:
            return c
        slot = sent.lookup(c.keys)
        hit = slot >= 0
        if hit.any():
            s = slot[hit]
            hit[hit] = k.covers_arrays(c.keys[hit], sent.epochs[s], sent.origins[s], sent.seqs[s])
        if not hit.any():
            return c
        base = c.magnitudes if c.drift is None else c.drift
        drift = np.array(base, dtype=np.float64, copy=True)
        stale = np.zeros(c.n, dtype=np.bool_)
        stale[hit] = sent.stale[slot[hit]]
        exact = hit & ~stale
        now = store.row_values(c.table, c.rows[exact]).astype(np.float64)
        drift[exact] = np.linalg.norm(now - sent.values[slot[exact]], axis=1)
        drift[stale] = c.magnitudes[stale]
        return replace(c, drift=drift)

    def _superseded(self, request: PullRequest) -> None:
        """The peer's report of rows this scheduler sent that something else overwrote."""
        peer = _peer_key(request)
        if request.forget:
            self._sent.pop(peer, None)
            return
        tables = self._sent.get(peer)
        for table, keys in request.superseded if tables else ():
            sent = tables.get(table) if tables else None
            if sent is not None:
                sent.supersede(np.asarray(keys, dtype=np.int64))

    def _acknowledged(self, request: PullRequest) -> None:
        numbers = [n for src, n in request.acks if src == self.source]
        for table in self._sent.get(_peer_key(request), {}).values() if numbers else ():
            table.acknowledge(numbers)

    def _remember_sent(
        self, peer: str, store: Store, c: Candidates, take: I64, held: F32, *, number: int
    ) -> None:
        cap = self.config.peer_rows
        if cap == 0:
            return
        tables = self._sent.setdefault(peer, {})
        sent = tables.get(c.table)
        if sent is None:
            sent = tables[c.table] = _SentRows(cap, store.spec(c.table).dim)
        sent.put(
            c.keys[take],
            c.epochs[take],
            c.origins[take],
            c.seqs[take],
            held,
            number=number,
        )

    def _track_peer(self, store: Store, request: PullRequest) -> dict[ShardId, Knowledge]:
        """Remember what each live downstream holds (its request's knowledge; :meth:`respond`
        adds what it sends) and tell the store, for the drift baseline. Returns the peer's
        entry to update."""
        self._responses += 1
        now = self._responses
        held = dict(request.knowledge)
        self._peers[_peer_key(request)] = (now, held)
        ttl = self.config.peer_ttl
        for peer in [p for p, (seen, _) in self._peers.items() if now - seen > ttl]:
            del self._peers[peer]
            self._sent.pop(peer, None)
        views = [v for _, v in self._peers.values()]
        for shard in store.shards():
            store.set_downstreams(shard, [v.get(shard, _NOTHING) for v in views])
        return held


_NOTHING = Knowledge()


def _peer_key(request: PullRequest) -> str:
    """Whom the scheduler's per-peer memory is about: the peer's name and its store's id (two
    pullers under one name must not share what this responder believes they hold)."""
    return f"{request.peer}#{request.puller}" if request.puller else request.peer


class _SentRows:
    """The rows (key, version, value) recently sent to one peer for one table, at most
    ``capacity``; when full, the least recently sent half is dropped."""

    def __init__(self, capacity: int, dim: int) -> None:
        self.capacity = capacity
        self.slot: dict[int, int] = {}
        self.n = 0
        size = min(capacity, 1024)
        self.keys = np.zeros(size, dtype=np.int64)
        self.epochs = np.zeros(size, dtype=np.int64)
        self.origins = np.zeros(size, dtype=np.int64)
        self.seqs = np.zeros(size, dtype=np.int64)
        self.stamps = np.zeros(size, dtype=np.int64)
        self.values = np.zeros((size, dim), dtype=np.float32)
        self.numbers = np.zeros(size, dtype=np.int64)
        """The response that last sent each row."""
        self.acked = np.zeros(size, dtype=np.bool_)
        """Whether that response is acknowledged (only then is the value a residual base)."""
        self.stale = np.zeros(size, dtype=np.bool_)
        """The peer reported the row overwritten by something else since (it holds a newer
        version than the one sent, of another value)."""
        self.clock = 0

    _COLUMNS = (
        "keys",
        "epochs",
        "origins",
        "seqs",
        "stamps",
        "values",
        "numbers",
        "acked",
        "stale",
    )

    def acknowledge(self, numbers: Sequence[int]) -> None:
        n = self.n
        self.acked[:n] |= (
            np.isin(self.numbers[:n], np.asarray(numbers, dtype=np.int64)) & ~(self.stale[:n])
        )

    def supersede(self, keys: I64) -> None:
        """The peer no longer holds what was sent of ``keys``: neither a drift nor a residual
        base (a later acknowledgement of the response that sent them does not revive them)."""
        slots = self.lookup(keys)
        s = slots[slots >= 0]
        self.stale[s] = True
        self.acked[s] = False

    def lookup(self, keys: I64) -> I64:
        get = self.slot.get
        return np.fromiter((get(k, -1) for k in keys.tolist()), dtype=np.int64, count=len(keys))

    def put(
        self,
        keys: I64,
        epochs: I64,
        origins: I64,
        seqs: I64,
        values: npt.ArrayLike,
        *,
        number: int = 0,
    ) -> None:
        self.clock += 1
        slots = self.lookup(keys)
        self.stamps[slots[slots >= 0]] = self.clock  # sent again: the most recent now
        fresh = np.flatnonzero(slots < 0)
        if len(fresh):
            if self.n + len(fresh) > self.capacity:
                # Eviction compacts the slots: look up again.
                self._evict(max(self.capacity // 2, self.n + len(fresh) - self.capacity))
                slots = self.lookup(keys)
                fresh = np.flatnonzero(slots < 0)
            if self.n + len(fresh) > len(self.keys):
                self._grow(min(self.capacity, max(2 * len(self.keys), self.n + len(fresh))))
            fresh = fresh[-(self.capacity - self.n) :] if self.capacity > self.n else fresh[:0]
            new = np.arange(self.n, self.n + len(fresh), dtype=np.int64)
            for k, i in zip(keys[fresh].tolist(), new.tolist(), strict=True):
                self.slot[k] = i
            slots[fresh] = new
            self.n += len(fresh)
        ok = slots >= 0
        s = slots[ok]
        self.keys[s], self.epochs[s], self.origins[s] = keys[ok], epochs[ok], origins[ok]
        self.seqs[s] = seqs[ok]
        self.values[s] = np.asarray(values, dtype=np.float32)[ok]
        self.stamps[s] = self.clock
        self.numbers[s] = number
        self.acked[s] = False
        self.stale[s] = False

    def _grow(self, size: int) -> None:
        for name in self._COLUMNS:
            old = getattr(self, name)
            new = np.zeros((size, *old.shape[1:]), dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def _evict(self, count: int) -> None:
        keep = np.sort(np.argsort(self.stamps[: self.n], kind="stable")[count:])
        for name in self._COLUMNS:
            col = getattr(self, name)
            col[: len(keep)] = col[keep]
        self.n = len(keep)
        self.slot = {k: i for i, k in enumerate(self.keys[: self.n].tolist())}


def _covered(vector: VersionVector, c: Candidates, unsent: npt.NDArray[np.bool_]) -> VersionVector:
    """What a response may vouch for: the responder's vector, cut below the oldest unsent row of
    each source (every row of that source up to there was sent, or the peer already held it),
    and below the born version of every unsent new row (so a row the peer never received stays
    new to it, however often it was rewritten meanwhile)."""
    if not unsent.any():
        return vector
    out = vector.as_dict()
    for (e, o), top in list(out.items()):
        cut = top
        m = unsent & (c.epochs == e) & (c.origins == o)
        if m.any():
            cut = min(cut, int(c.seqs[m].min()) - 1)
        if c.born is not None:
            be, bo, bs = c.born
            m = unsent & c.new & (be == e) & (bo == o)
            if m.any():
                cut = min(cut, int(bs[m].min()) - 1)
        out[(e, o)] = cut
    return VersionVector.of(out)
