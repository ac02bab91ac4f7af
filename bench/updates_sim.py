"""Deterministic discrete-event simulation of the update data plane (the bench's ``--mode sim``).

A training region (trainer + origin) and ``regions`` inference regions of ``servers`` servers
each. The trainer consumes the event stream at ``rate`` events/s of simulated time; every event
writes three rows (user, item, dense) whose version is the write's index, so versions are
monotone per key. Replicas pull: a puller sends its knowledge (exactly the versions it holds,
i.e. a version vector plus the exception set), the upstream answers as soon as something newer
exists (long poll) with rows in policy order up to the byte budget its link's token bucket
allows, and the puller applies idempotently and monotonically, then pulls again (at most once
per ``min_interval_s``). Topologies: ``p2p`` (one leader per region pulls across the WAN,
followers pull from it over the LAN) and ``direct`` (every server pulls from the origin).
Policies: ``priority`` (Ekko's ``p = (p_g + p_u) × p_m``: new rows first, then rows above the
``high_pct`` percentile, then the rest), ``fifo`` (state-based, rows in version order) and ``log``
(every write in order, as a message log delivers). ``priority`` and ``fifo`` run the product's
path (``product=True``, the default): every replica is an :class:`ekko.updates.store.Store`, the
origin's writes go through :meth:`~ekko.updates.store.Store.write`, every response is
:meth:`ekko.updates.priority.Scheduler.respond` over the puller's real knowledge (version vector
plus bounded exception set) and is applied with :meth:`~ekko.updates.store.Store.apply`; the sim
only keeps per-key bookkeeping of what each replica applied when, for the quality replay.
``product=False`` is the fast path: exact per-key knowledge, rows ranked by the product's
``Scheduler.rank``/``order`` with the last write's magnitude as significance (what the product
scheduler did before its drift baseline); the bench uses it where no link is capped (every
candidate is sent, so the order does not matter) and as the "before" reference.
``priority_delta`` is the earlier ablation (exact per-key knowledge, significance against the
peer's own value, rest by score), kept as a reference. Rows are budgeted at the store's upper bound per row
(:data:`ekko.updates.store.ROW_OVERHEAD_BYTES` plus the values) and, with zstd, at the measured
size of the compressed frame.

Each node logs what it applied when; :func:`served_quality` replays the evaluation events
afterwards against what a node held at each event's time (progressive validation: a row
published by the event itself is never visible to its own prediction).

The trainer's output does not depend on dissemination, so :func:`train_writes` runs once per
stream and seed and every configuration replays the same writes.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from bench.updates_data import Stream
from ekko.updates.codec import FORMAT_VERSION, Encoding, decode_response, encode_response
from ekko.updates.priority import Policy, Ranked, Scheduler, SchedulerConfig, TableContext, order
from ekko.updates.scoring import DENSE, ITEM, USER, LogisticMF, auc, logloss, row_logits
from ekko.updates.store import (
    ROW_OVERHEAD_BYTES,
    Batch,
    Candidates,
    PullResponse,
    Store,
    TableSpec,
    ValueDType,
)

try:  # the product codec uses zstandard; the bench falls back to zlib if it is not installed
    import zstandard

    _ZC = zstandard.ZstdCompressor(level=1)

    def compress(b: bytes) -> bytes:
        return _ZC.compress(b)

    COMPRESSOR = "zstd-1"
except ImportError:  # pragma: no cover - depends on the environment

    def compress(b: bytes) -> bytes:
        return zlib.compress(b, 1)

    COMPRESSOR = "zlib-1"

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
TABLES = (USER, ITEM, DENSE)
FRAME_HEADER = 48  # bytes: magic, version, codec, table sections, row count
ROW_META = ROW_OVERHEAD_BYTES  # key, version (seq), publish time, class, source
CLASSES = ("new", "high", "rest")
CODEC_DTYPES: dict[str, ValueDType] = {"fp32": "float32", "fp16": "float16", "int8": "int8"}


# -- trainer output ------------------------------------------------------------------------------


@dataclass
class Writes:
    """Every row write of one training run, in publish order (index = version)."""

    gkey: I64  # global key: users, then items, then the dense row
    table: NDArray[np.int8]
    t: F64  # publish time
    values: F32  # (n, width) padded rows; the dense row uses column 0
    widths: tuple[int, int, int]
    mag: F64  # norm of the change this write made to its row
    next_same: I64  # next write of the same key (n if none)
    first_write: I64  # per global key, its first write (n if never written)
    key_table: NDArray[np.int8]
    offsets: tuple[int, int, int]
    n_keys: int
    event_t: F64
    users: I64
    items: I64
    labels: NDArray[np.int8]
    preds: F64  # the trainer's own progressive-validation predictions
    cum_mag: F64  # (n + 1, 3) running sums of mag per table
    cum_cnt: F64

    def __len__(self) -> int:
        return int(self.gkey.size)


def train_writes(stream: Stream, rate: float, seed: int, dim: int = 16, lr: float = 0.05) -> Writes:
    """Run the trainer over the stream (event ``j`` at ``j / rate`` s) and keep every row write."""
    n_ev = len(stream)
    mf = LogisticMF(dim, lr=lr, seed=seed, capacity=max(stream.n_users, stream.n_items, 1))
    width = dim + 1
    offsets = (0, stream.n_users, stream.n_users + stream.n_items)
    n = 3 * n_ev
    values = np.zeros((n, width), dtype=np.float32)
    preds = np.empty(n_ev, dtype=np.float64)
    ut, it = mf.tables[USER], mf.tables[ITEM]
    for j in range(n_ev):
        u, i = int(stream.users[j]), int(stream.items[j])
        preds[j], _ = mf.step(u, i, float(stream.labels[j]))
        ut, it = mf.tables[USER], mf.tables[ITEM]
        values[3 * j] = ut[u]
        values[3 * j + 1] = it[i]
        values[3 * j + 2, 0] = mf.tables[DENSE][0, 0]
    table = np.tile(np.array([0, 1, 2], dtype=np.int8), n_ev)
    gkey = np.empty(n, dtype=np.int64)
    gkey[0::3] = stream.users + offsets[0]
    gkey[1::3] = stream.items + offsets[1]
    gkey[2::3] = offsets[2]
    n_keys = offsets[2] + 1
    event_t = np.arange(n_ev, dtype=np.float64) / rate
    t = np.repeat(event_t, 3)
    order = np.argsort(gkey, kind="stable")
    same = np.concatenate(([False], gkey[order][1:] == gkey[order][:-1]))
    prev = np.full(n, -1, dtype=np.int64)
    prev[order[same]] = order[np.flatnonzero(same) - 1]
    next_same = np.full(n, n, dtype=np.int64)
    has_prev = prev >= 0
    next_same[prev[has_prev]] = np.flatnonzero(has_prev)
    before = np.where(has_prev[:, None], values[np.maximum(prev, 0)], 0.0)
    mag = np.linalg.norm(values - before, axis=1).astype(np.float64)
    first_write = np.full(n_keys, n, dtype=np.int64)
    firsts = order[~same]
    first_write[gkey[firsts]] = firsts
    key_table = np.full(n_keys, 2, dtype=np.int8)
    key_table[: offsets[1]] = 0
    key_table[offsets[1] : offsets[2]] = 1
    onehot = np.zeros((n, 3))
    onehot[np.arange(n), table] = 1.0
    cum_mag = np.vstack((np.zeros((1, 3)), np.cumsum(onehot * mag[:, None], axis=0)))
    cum_cnt = np.vstack((np.zeros((1, 3)), np.cumsum(onehot, axis=0)))
    return Writes(
        gkey,
        table,
        t,
        values,
        (width, width, 1),
        mag,
        next_same,
        first_write,
        key_table,
        offsets,
        n_keys,
        event_t,
        stream.users.astype(np.int64),
        stream.items.astype(np.int64),
        stream.labels,
        preds,
        cum_mag,
        cum_cnt,
    )


# -- codec (sizes and the values a replica ends up holding) --------------------------------------


def quantize(values: F32, codec: str) -> F32:
    """What a replica holds after a row went through ``codec`` (fp32, fp16, int8 per-row scale)."""
    if codec == "fp32":
        return values
    if codec == "fp16":
        return values.astype(np.float16).astype(np.float32)
    if codec == "int8":
        scale = np.abs(values).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(values / scale), -127, 127)
        return (q * scale).astype(np.float32)
    raise ValueError(f"unknown codec {codec!r}")


def value_bytes(width: int, codec: str) -> int:
    return {"fp32": 4 * width, "fp16": 2 * width, "int8": width + 4}[codec]


def encode_frame(w: Writes, wids: I64, codec: str) -> bytes:
    """A frame: header, then per table keys, versions, publish times and values."""
    parts = [b"\0" * FRAME_HEADER]
    tabs = w.table[wids]
    for tab in range(3):
        sel = wids[tabs == tab]
        if sel.size == 0:
            continue
        width = w.widths[tab]
        parts += [w.gkey[sel].tobytes(), sel.tobytes(), w.t[sel].tobytes()]
        vals = w.values[sel, :width]
        if codec == "fp32":
            parts.append(vals.tobytes())
        elif codec == "fp16":
            parts.append(vals.astype(np.float16).tobytes())
        else:
            scale = np.abs(vals).max(axis=1) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(vals / scale[:, None]), -127, 127).astype(np.int8)
            parts += [scale.astype(np.float32).tobytes(), q.tobytes()]
    return b"".join(parts)


def decode_frame(w: Writes, data: bytes, wids_by_table: list[int], codec: str) -> list[F32]:
    """Decode a frame's values (used only to time decoding; sizes per table are known)."""
    out: list[F32] = []
    pos = FRAME_HEADER
    for tab, n in enumerate(wids_by_table):
        if n == 0:
            continue
        width = w.widths[tab]
        pos += 24 * n
        if codec == "fp32":
            v = np.frombuffer(data, np.float32, n * width, pos).reshape(n, width)
            pos += 4 * n * width
        elif codec == "fp16":
            v = np.frombuffer(data, np.float16, n * width, pos).reshape(n, width).astype(np.float32)
            pos += 2 * n * width
        else:
            scale = np.frombuffer(data, np.float32, n, pos)
            pos += 4 * n
            q = np.frombuffer(data, np.int8, n * width, pos).reshape(n, width)
            pos += n * width
            v = q.astype(np.float32) * scale[:, None]
        out.append(v)
    return out


# -- links ---------------------------------------------------------------------------------------


@dataclass
class Bucket:
    """Token bucket: ``rate`` bytes/s (None = uncapped), depth ``burst`` bytes."""

    rate: float | None
    burst: float
    tokens: float = 0.0
    last: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def available(self, t: float) -> float:
        if self.rate is None:
            return math.inf
        self.tokens = min(self.burst, self.tokens + self.rate * (t - self.last))
        self.last = t
        return self.tokens

    def take(self, t: float, n: float) -> None:
        if self.rate is not None:
            self.available(t)
            self.tokens -= n

    def wait_for(self, t: float, n: float) -> float:
        """Seconds until ``n`` tokens are there."""
        if self.rate is None:
            return 0.0
        return max(0.0, (n - self.available(t)) / self.rate)


@dataclass
class Link:
    delay: float
    bucket: Bucket
    wan: bool
    sent_bytes: int = 0
    raw_bytes: int = 0
    frames: int = 0


# -- simulation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    policy: str = "priority"  # priority | fifo | log
    codec: str = "fp32"  # fp32 | fp16 | int8
    zstd: bool = False
    topology: str = "p2p"  # p2p | direct
    regions: int = 3
    servers: int = 3
    wan_delay_s: float = 0.040
    lan_delay_s: float = 0.001
    wan_rate: float | None = None  # bytes/s per directed WAN link (None: uncapped)
    uplink_rate: float | None = None  # the origin's shared egress (None: uncapped)
    burst_s: float = 0.25  # bucket depth, seconds of rate
    min_interval_s: float = 0.05
    high_pct: float = 90.0  # the scheduler's default high percentile
    jitter: float = 0.1  # each message's delay is scaled by U(1, 1 + jitter)
    seed: int = 0
    product: bool = False  # priority/fifo through the product's Store and Scheduler.respond
    exception_budget: int = 1024  # the scheduler's rest-by-score budget (product path)
    peer_rows: int = 65536  # rows per peer and table whose sent value the scheduler remembers
    new_first: bool = True  # never-received rows in a class of their own, before high and rest
    new_bonus: float = 1.0e6  # p_u of a never-received row
    frame_version: int = FORMAT_VERSION  # product path: 3 sends int8 rows as residuals


@dataclass
class Node:
    name: str
    region: int  # -1: the training region
    up: int  # upstream node (-1 for the origin)
    link: Link | None
    leader: bool
    ver: I64
    cursor: int = 0  # log policy: writes held are exactly [0, cursor)
    waiters: list[int] = field(default_factory=list)
    last_send: float = -math.inf
    log_t: list[F64] = field(default_factory=list)
    log_w: list[I64] = field(default_factory=list)
    log_c: list[NDArray[np.int8]] = field(default_factory=list)
    log_v: list[F32] = field(default_factory=list)  # product path: the values the store holds
    store: Store | None = None


@dataclass
class SimResult:
    config: SimConfig
    nodes: list[Node]
    links: dict[str, Link]
    end_t: float

    def applied(self, k: int) -> tuple[F64, I64, NDArray[np.int8]]:
        n = self.nodes[k]
        if not n.log_t:
            return np.empty(0), np.empty(0, np.int64), np.empty(0, np.int8)
        return np.concatenate(n.log_t), np.concatenate(n.log_w), np.concatenate(n.log_c)

    def held(self, k: int) -> F32 | None:
        """Product path: the value node ``k`` held after each applied row (``applied`` order)."""
        n = self.nodes[k]
        return np.concatenate(n.log_v) if n.log_v else None


class Sim:
    """One run of one configuration over one trainer output."""

    def __init__(self, w: Writes, cfg: SimConfig) -> None:
        self.w = w
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed + 7919)
        self.heap: list[tuple[float, int, int, int, object]] = []
        self.seq = 0
        self.pub = 0  # writes published so far (origin)
        self.end_t = float(w.t[-1]) + 1.0
        burst = max(8192.0, cfg.uplink_rate * cfg.burst_s) if cfg.uplink_rate is not None else 0.0
        self.uplink = Bucket(cfg.uplink_rate, burst)
        self.links: dict[str, Link] = {}
        self.ratio: dict[int, float] = {}
        self.schedulers: dict[int, Scheduler] = {}
        self.recorded: list[PullResponse] | None = None  # product path: WAN responses, if a list
        # The log-style reference keeps frame version 1 (8-byte keys, 4-byte seqs and times per
        # write), so the baseline of the bytes figures does not move when the codec improves.
        version = 1 if cfg.policy == "log" else cfg.frame_version
        self.encoding = Encoding(CODEC_DTYPES[cfg.codec], cfg.zstd, version=version)
        self.specs = tuple(TableSpec(name, wd) for name, wd in zip(TABLES, w.widths, strict=True))
        self.responder = 0
        nk = w.n_keys
        self.nodes: list[Node] = [Node("origin", -1, -1, None, False, np.full(nk, -1, np.int64))]
        for r in range(cfg.regions):
            wan = self._link(f"wan:T->{r}", cfg.wan_delay_s, cfg.wan_rate, True)
            leader_id = len(self.nodes)
            for s in range(cfg.servers):
                if cfg.topology == "direct" or s == 0:
                    up, link, is_leader = 0, wan, cfg.topology == "p2p"
                else:
                    up, is_leader = leader_id, False
                    link = self._link(f"lan:{r}.0->{r}.{s}", cfg.lan_delay_s, None, False)
                node = Node(f"r{r}s{s}", r, up, link, is_leader, np.full(nk, -1, np.int64))
                self.nodes.append(node)
        self.product = cfg.product and cfg.policy in ("priority", "fifo")
        if self.product:
            for node in self.nodes:
                node.store = Store()
                for spec in self.specs:
                    node.store.declare(spec)

    def _link(self, name: str, delay: float, rate: float | None, wan: bool) -> Link:
        if name not in self.links:
            burst = max(8192.0, rate * self.cfg.burst_s) if rate is not None else 0.0
            self.links[name] = Link(delay, Bucket(rate, burst), wan)
        return self.links[name]

    def _push(self, t: float, kind: int, node: int, payload: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, node, payload))

    def _delay(self, link: Link) -> float:
        return link.delay * (1.0 + self.cfg.jitter * float(self.rng.random()))

    # kinds: 0 request arrives upstream / retry, 1 response arrives downstream
    def run(self) -> SimResult:
        for k in range(1, len(self.nodes)):
            start = float(self.rng.random()) * self.cfg.min_interval_s
            self._send_pull(k, start)
        while self.heap:
            t, _, kind, k, payload = heapq.heappop(self.heap)
            if t > self.end_t:
                break
            if kind == 0:
                self._respond(k, t)
            else:
                self._apply(k, t, payload)
        return SimResult(self.cfg, self.nodes, self.links, self.end_t)

    def _send_pull(self, k: int, t: float) -> None:
        node = self.nodes[k]
        assert node.link is not None
        send = max(t, node.last_send + self.cfg.min_interval_s)
        node.last_send = send
        self._push(send + self._delay(node.link), 0, k, None)

    def _advance_origin(self, t: float) -> None:
        w = self.w
        b = int(np.searchsorted(w.t, t, side="right"))
        if b > self.pub:
            ids = np.arange(self.pub, b, dtype=np.int64)
            np.maximum.at(self.nodes[0].ver, w.gkey[self.pub : b], ids)
            origin = self.nodes[0].store
            if origin is not None:  # the product path: the origin's Store.write (seq = id + 1)
                tabs = w.table[ids]
                for j, name in enumerate(TABLES):
                    sel = ids[tabs == j]
                    if sel.size:
                        origin.write(
                            name,
                            w.gkey[sel] - w.offsets[j],
                            w.values[sel, : w.widths[j]],
                            epoch=0,
                            origin=1,
                            seqs=sel + 1,
                            publish_time=float(w.t[sel[-1]]),
                        )
            self.nodes[0].cursor = b
            self.pub = b

    def _wait_upstream(self, k: int, up: int, t: float) -> None:
        if up == 0:
            if self.pub < len(self.w):
                self._push(float(self.w.t[self.pub]), 0, k, None)
        else:
            self.nodes[up].waiters.append(k)

    def _respond(self, k: int, t: float) -> None:
        cfg, w = self.cfg, self.w
        node = self.nodes[k]
        up = self.nodes[node.up]
        link = node.link
        assert link is not None
        self._advance_origin(t)
        if self.product:
            self._respond_product(k, t)
            return
        if cfg.policy == "log":
            if up.cursor <= node.cursor:
                self._wait_upstream(k, node.up, t)
                return
            wids = np.arange(node.cursor, up.cursor, dtype=np.int64)
            classes = np.where(w.first_write[w.gkey[wids]] == wids, 0, 2).astype(np.int8)
        else:
            self.responder = node.up
            cand = np.flatnonzero(up.ver > node.ver)
            if cand.size == 0:
                self._wait_upstream(k, node.up, t)
                return
            wids, classes = self._order(cand, up.ver[cand], node.ver[cand], t)
        budget = link.bucket.available(t)
        if node.up == 0:
            budget = min(budget, self.uplink.available(t))
        row_b = np.array([ROW_META + value_bytes(x, cfg.codec) for x in w.widths])
        sizes = np.cumsum(row_b[w.table[wids]]) + FRAME_HEADER
        if math.isinf(budget):
            n = wids.size
        else:
            ratio = self.ratio.get(k, 0.5)
            n = int(np.searchsorted(sizes * ratio, budget, side="right"))
            if n == 0:
                need = float(sizes[0]) * ratio
                wait = max(link.bucket.wait_for(t, need), self.uplink.wait_for(t, need))
                self._push(t + max(wait, 1e-4), 0, k, None)
                return
        size, raw = self._frame_size(k, wids, n, budget, sizes)
        while size > budget and n > 1:
            n = max(1, int(n * budget / size * 0.95))
            size, raw = self._frame_size(k, wids, n, budget, sizes)
        if size > budget:  # one row that does not fit yet
            wait = max(link.bucket.wait_for(t, size), self.uplink.wait_for(t, size))
            self._push(t + max(wait, 1e-4), 0, k, None)
            return
        link.bucket.take(t, size)
        if node.up == 0:
            self.uplink.take(t, size)
        link.sent_bytes += size
        link.raw_bytes += raw
        link.frames += 1
        self._push(t + self._delay(link), 1, k, (wids[:n], classes[:n]))  # fast path

    def _respond_product(self, k: int, t: float) -> None:
        """One pull answered by the product: ``Scheduler.respond_encoded`` over the puller's
        knowledge, budgeted at the link's tokens in encoded bytes, encoded by the product codec."""
        cfg, w = self.cfg, self.w
        node = self.nodes[k]
        up = self.nodes[node.up]
        link = node.link
        assert link is not None and node.store is not None and up.store is not None
        if not (up.ver > node.ver).any():
            self._wait_upstream(k, node.up, t)
            return
        sched = self.schedulers.get(node.up)
        if sched is None:
            policy: Policy = "fifo" if cfg.policy == "fifo" else "ekko"
            sched = Scheduler(
                SchedulerConfig(
                    policy=policy,
                    high_percentile=cfg.high_pct / 100,
                    exception_budget=cfg.exception_budget,
                    peer_rows=cfg.peer_rows,
                    new_first=cfg.new_first,
                    new_bonus=cfg.new_bonus,
                )
            )
            self.schedulers[node.up] = sched
        budget = link.bucket.available(t)
        if node.up == 0:
            budget = min(budget, self.uplink.available(t))
        ratio = self.ratio.get(k, 0.5)
        dtype = CODEC_DTYPES[cfg.codec]
        row_max = max(ROW_META + value_bytes(x, cfg.codec) for x in w.widths)
        need = (FRAME_HEADER + row_max) * ratio
        resp = None
        if budget >= need:
            # The product fills the budget in encoded bytes (Scheduler.respond_encoded: scaled
            # by the peer's observed frame/upper-bound ratio, cut again while it does not fit).
            req = node.store.pull_request(
                1 << 62 if math.isinf(budget) else int(budget),
                dtype,
                cfg.zstd,
                peer=node.name,
                source=sched.source,
            )
            req = replace(req, frame_version=cfg.frame_version)
            resp, frame = sched.respond_encoded(
                up.store, req, lambda r: encode_response(r, self.encoding)
            )
        if resp is None or resp.n_rows == 0:  # not even one row fits yet: wait for tokens
            wait = max(link.bucket.wait_for(t, need), self.uplink.wait_for(t, need))
            self._push(t + max(wait, 1e-4), 0, k, None)
            return
        # A frame a little over the tokens still goes (the bucket goes negative, as the
        # node's does): the scheduler already recorded it as sent.
        size = len(frame)
        if self.recorded is not None and link.wan:
            self.recorded.append(resp)
        wid_parts, cls_parts = [], []
        raw = FRAME_HEADER
        for b in resp.batches:
            j = TABLES.index(b.table)
            wid_parts.append(b.seqs - 1)
            cls_parts.append(b.classes.astype(np.int8))
            raw += b.n * (ROW_META + value_bytes(w.widths[j], "fp32"))
        self.ratio[k] = 0.7 * ratio + 0.3 * size / raw
        link.bucket.take(t, size)
        if node.up == 0:
            self.uplink.take(t, size)
        link.sent_bytes += size
        link.raw_bytes += raw
        link.frames += 1
        wids = np.concatenate(wid_parts)
        classes = np.concatenate(cls_parts)
        # The puller applies what it decodes (residual rows against what it holds).
        self._push(t + self._delay(link), 1, k, (wids, classes, decode_response(frame)))

    def _frame_size(self, k: int, wids: I64, n: int, budget: float, sizes: I64) -> tuple[int, int]:
        """Wire bytes of the first ``n`` rows, encoded by the product codec, and their raw
        (uncompressed fp32 upper-bound) bytes."""
        raw = int(sizes[n - 1])
        size = len(encode_response(self._response(wids[:n]), self.encoding))
        self.ratio[k] = 0.7 * self.ratio.get(k, 0.5) + 0.3 * size / raw
        return size, raw

    def _response(self, wids: I64) -> PullResponse:
        w = self.w
        batches = []
        tabs = w.table[wids]
        for j, name in enumerate(TABLES):
            sel = wids[tabs == j]
            if sel.size == 0:
                continue
            batches.append(
                Batch.of(
                    name,
                    0,
                    w.gkey[sel] - w.offsets[j],
                    epochs=0,
                    origins=0,
                    seqs=sel,
                    publish_times=w.t[sel],
                    values=w.values[sel, : w.widths[j]],
                )
            )
        return PullResponse(self.specs, tuple(batches))

    def _order(self, keys: I64, have: I64, known: I64, t: float) -> tuple[I64, NDArray[np.int8]]:
        """Rows to send (as write ids) in policy order, and their priority class, ranked by the
        product's scheduler (:mod:`ekko.updates.priority`): one scheduler (and quantile sketch)
        per responder, rows ranked per table with the table's running mean magnitude."""
        w, cfg = self.w, self.cfg
        sched = self.schedulers.get(self.responder)
        if sched is None:
            policy: Policy = "fifo" if cfg.policy == "fifo" else "ekko"
            # "priority_delta" (an ablation): significance is the change since the version the
            # peer holds, and the rest class goes by score too (the product sends it in seq order)
            sched = Scheduler(SchedulerConfig(policy=policy, high_percentile=cfg.high_pct / 100))
            self.schedulers[self.responder] = sched
        tab = w.key_table[keys]
        p_idx = min(self.pub, len(w))
        mean = w.cum_mag[p_idx] / np.maximum(w.cum_cnt[p_idx], 1.0)
        parts: list[Ranked] = []
        idx: list[I64] = []
        zeros = np.zeros(keys.size, dtype=np.int64)
        mags = w.mag[have]
        if cfg.policy == "priority_delta":
            before = np.where((known < 0)[:, None], 0.0, w.values[np.maximum(known, 0)])
            mags = np.linalg.norm(w.values[have] - before, axis=1)
        for j, name in enumerate(TABLES):
            m = np.flatnonzero(tab == j)
            if m.size == 0:
                continue
            c = Candidates(
                name,
                0,
                keys[m],
                keys[m],
                zeros[m],
                zeros[m],
                have[m],
                w.t[have[m]],
                mags[m],
                known[m] < 0,
            )
            parts.append(sched.rank(c, TableContext(float(max(mean[j], 1e-12)), 1.0)))
            idx.append(m)
        ranked = Ranked.concat(parts)
        perm = np.concatenate(idx)
        if cfg.policy == "priority_delta":
            ordered = perm[np.lexsort((ranked.seqs, -ranked.scores, ranked.classes))]
        else:
            ordered = perm[order(ranked, sched.config.policy)]
        classes = np.empty(keys.size, dtype=np.int8)
        classes[perm] = ranked.classes.astype(np.int8)
        return have[ordered], classes[ordered]

    def _apply(self, k: int, t: float, payload: object) -> None:
        wids, classes, *resp = payload  # type: ignore[misc]
        node = self.nodes[k]
        if resp and node.store is not None:
            self._apply_product(k, t, resp[0])
            return
        keys = self.w.gkey[wids]
        if self.cfg.policy == "log":
            node.cursor = int(wids[-1]) + 1
            np.maximum.at(node.ver, keys, wids)
            fresh = np.ones(wids.size, dtype=bool)
        else:
            fresh = wids > node.ver[keys]  # idempotent, monotone
            node.ver[keys[fresh]] = wids[fresh]
        if fresh.any():
            node.log_t.append(np.full(int(fresh.sum()), t))
            node.log_w.append(wids[fresh])
            node.log_c.append(classes[fresh])
            for d in node.waiters:
                self._push(t, 0, d, None)
            node.waiters.clear()
        self._send_pull(k, t)

    def _apply_product(self, k: int, t: float, response: PullResponse) -> None:
        """The product path: the store applies the decoded response; the log records each row
        it applied and the value it then held."""
        w, node = self.w, self.nodes[k]
        assert node.store is not None
        wid_parts, cls_parts, val_parts = [], [], []
        for r in node.store.apply_response(response):
            if r.applied == 0:
                continue
            j = TABLES.index(r.shard[0])
            wid_parts.append(r.seqs - 1)
            cls_parts.append(r.classes.astype(np.int8))
            vals = np.zeros((r.applied, w.values.shape[1]), dtype=np.float32)
            vals[:, : w.widths[j]] = node.store.get(r.shard[0], r.keys)[0]
            val_parts.append(vals)
        if wid_parts:
            wids = np.concatenate(wid_parts)
            node.ver[w.gkey[wids]] = np.maximum(node.ver[w.gkey[wids]], wids)
            node.log_t.append(np.full(wids.size, t))
            node.log_w.append(wids)
            node.log_c.append(np.concatenate(cls_parts))
            node.log_v.append(np.concatenate(val_parts))
            for d in node.waiters:
                self._push(t, 0, d, None)
            node.waiters.clear()
        self._send_pull(k, t)


# -- analysis ------------------------------------------------------------------------------------


def served_quality(
    w: Writes,
    log_t: F64,
    log_w: I64,
    eval_from: int,
    values: F32 | None = None,
    *,
    held: F32 | None = None,
) -> tuple[float, float]:
    """AUC and logloss of a replica that applied write ``log_w[j]`` at ``log_t[j]``, on events
    ``eval_from..``: each event is scored with the rows applied strictly before its time, at
    the value ``held[j]`` the replica held then (default: the write's value, or ``values``)."""
    vals = w.values if values is None else values
    ev = np.arange(eval_from, w.event_t.size)
    tq = w.event_t[ev]
    gk = w.gkey[log_w]
    span = float(max(log_t.max() if log_t.size else 0.0, tq.max())) + 10.0
    order = np.lexsort((log_w, log_t, gk))
    enc = gk[order] * span + log_t[order]
    gks = gk[order]
    wid_sorted = log_w[order]
    held_sorted = held[order] if held is not None else None

    def rows(qkeys: I64) -> F64:
        idx = np.searchsorted(enc, qkeys * span + tq, side="left") - 1
        ok = idx >= 0
        ok[ok] = gks[idx[ok]] == qkeys[ok]
        out = np.zeros((qkeys.size, vals.shape[1]), dtype=np.float64)
        out[ok] = vals[wid_sorted[idx[ok]]] if held_sorted is None else held_sorted[idx[ok]]
        return out

    u = rows(w.users[ev] + w.offsets[0])
    v = rows(w.items[ev] + w.offsets[1])
    b = rows(np.full(ev.size, w.offsets[2], dtype=np.int64))[:, 0]
    p = 1.0 / (1.0 + np.exp(-(row_logits(u, v) + b)))
    y = w.labels[ev]
    return auc(y, p), logloss(y, p)


def fixed_lag_log(w: Writes, lag: float) -> tuple[F64, I64]:
    """A replica that applies every write exactly ``lag`` seconds after it is published."""
    return w.t + lag, np.arange(len(w), dtype=np.int64)


def periodic_sync_log(w: Writes, period: float) -> tuple[F64, I64]:
    """A replica that receives the full state at every multiple of ``period``."""
    return np.ceil(w.t / period + 1e-12) * period, np.arange(len(w), dtype=np.int64)


def frozen_log(w: Writes, eval_from: int) -> tuple[F64, I64]:
    """A replica frozen at the state the trainer had when evaluation starts."""
    n = int(np.searchsorted(w.t, w.event_t[eval_from], side="left"))
    return w.t[:n].copy(), np.arange(n, dtype=np.int64)


def pct(x: F64, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else float("nan")


def lag_stats(x: F64) -> dict[str, float]:
    return {
        "n": float(x.size),
        "mean_s": float(x.mean()) if x.size else float("nan"),
        "p50_s": pct(x, 50),
        "p99_s": pct(x, 99),
    }


def summarize(
    res: SimResult, w: Writes, eval_from: int, values: F32 | None = None
) -> dict[str, object]:
    """Lag per hop and class, bytes per link kind, served quality (mean over inference servers)."""
    cross: list[F64] = []
    cross_c: list[NDArray[np.int8]] = []
    hop: list[F64] = []
    hop_c: list[NDArray[np.int8]] = []
    e2e: list[F64] = []
    leader_at: dict[int, F64] = {}
    aucs, losses = [], []
    for k, node in enumerate(res.nodes):
        if k == 0:
            continue
        lt, lw, lc = res.applied(k)
        lag = lt - w.t[lw]
        e2e.append(lag)
        if node.up == 0:
            cross.append(lag)
            cross_c.append(lc)
            if node.leader:
                at = np.full(len(w), np.nan)
                at[lw] = lt
                leader_at[k] = at
        a, ll = served_quality(w, lt, lw, eval_from, values, held=res.held(k))
        aucs.append(a)
        losses.append(ll)
    for k, node in enumerate(res.nodes):
        if k and node.up in leader_at:
            lt, lw, lc = res.applied(k)
            hop.append(lt - leader_at[node.up][lw])
            hop_c.append(lc)
    out: dict[str, object] = {}
    for label, parts, cls in (("cross_region", cross, cross_c), ("leader_follower", hop, hop_c)):
        if not parts:
            continue
        x = np.concatenate(parts)
        c = np.concatenate(cls)
        out[f"lag_{label}"] = lag_stats(x)
        out[f"lag_{label}_by_class"] = {
            name: lag_stats(x[c == j]) for j, name in enumerate(CLASSES)
        }
    out["lag_end_to_end"] = lag_stats(np.concatenate(e2e))
    wan = [lk for lk in res.links.values() if lk.wan]
    lan = [lk for lk in res.links.values() if not lk.wan]
    uplink = sum(lk.sent_bytes for lk in wan)
    out["wan_bytes"] = sum(lk.sent_bytes for lk in wan)
    out["wan_raw_bytes"] = sum(lk.raw_bytes for lk in wan)
    out["lan_bytes"] = sum(lk.sent_bytes for lk in lan)
    out["uplink_bytes"] = uplink
    out["wan_rate_per_link_Bps"] = out["wan_bytes"] / max(res.end_t, 1e-9) / max(len(wan), 1)  # type: ignore[operator]
    out["frames"] = sum(lk.frames for lk in res.links.values())
    out["auc"] = float(np.mean(aucs))
    out["logloss"] = float(np.mean(losses))
    out["auc_per_server"] = [float(a) for a in aucs]
    return out


def run_config(
    w: Writes, cfg: SimConfig, eval_from: int, values_for: Callable[[str], F32] | None = None
) -> dict[str, object]:
    res = Sim(w, cfg).run()
    values = values_for(cfg.codec) if values_for is not None else None
    return summarize(res, w, eval_from, values)
