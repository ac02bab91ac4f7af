"""Engine adapters: how the agent loads, unloads and serves shards on one inference engine.

The agent only sees the :class:`Engine` protocol. Two adapters live here:

* ``sim`` holds no data: a load takes ``bytes / bandwidth`` seconds. It lets e2e tests and demos
  run hundreds of shards on a laptop.
* ``reference`` really fetches ``<uri>/shard-<index>`` from ``file://`` or ``http(s)://``, checks
  its size (and sha256 when the assignment carries a digest) and keeps it in memory.
* ``embedding`` serves a recommender from numpy embedding tables held in an
  :class:`ekko.updates.store.Store` that the agent's update node (:mod:`ekko.updates.node`)
  keeps fresh in place; ``/score`` answers (user, item) requests with a logistic MF scorer.

docs/agent.md describes how a Triton-style model-control adapter plugs in.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import aiohttp
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge

from ekko.agent.decide import ReplicaKey, key_of
from ekko.api.resources import AssignedShard
from ekko.updates.scoring import DENSE, ITEM, USER, logloss, score_rows
from ekko.updates.store import Store

CHUNK = 1 << 20


class LoadError(Exception):
    """A shard could not be loaded; the message says why, for status.message."""


class Engine(Protocol):
    """What the agent needs from an inference engine."""

    name: str

    async def inventory(self) -> dict[ReplicaKey, int]:
        """Shards the engine already holds when the agent starts (bytes each)."""
        ...

    async def load(self, shard: AssignedShard) -> int:
        """Load one shard replica and return the bytes it holds; raise LoadError on failure."""
        ...

    async def unload(self, key: ReplicaKey) -> None:
        """Drop a shard replica; unloading something not loaded is not an error."""
        ...

    async def infer(self, model: str, version: str) -> None:
        """Serve one (simulated) request on a loaded version of a model."""
        ...


class SimEngine:
    """Simulates loads from bytes and bandwidth; holds nothing but the names of its shards."""

    name = "sim"

    def __init__(self, bandwidth: float, infer_latency_ms: float = 1.0) -> None:
        if bandwidth <= 0:
            raise ValueError("bandwidth must be positive")
        self.bandwidth = bandwidth
        self.infer_latency_ms = infer_latency_ms
        self._held: dict[ReplicaKey, int] = {}

    async def inventory(self) -> dict[ReplicaKey, int]:
        return {}  # the simulated engine's memory dies with the agent

    async def load(self, shard: AssignedShard) -> int:
        await asyncio.sleep(shard.bytes / self.bandwidth)
        self._held[key_of(shard)] = shard.bytes
        return shard.bytes

    async def unload(self, key: ReplicaKey) -> None:
        self._held.pop(key, None)

    async def infer(self, model: str, version: str) -> None:
        await asyncio.sleep(self.infer_latency_ms / 1000)


def shard_location(uri: str, index: int) -> str:
    """``<uri>/shard-<index>``, whether or not the URI ends in a slash."""
    return f"{uri.rstrip('/')}/shard-{index}"


def expected_digest(shard: AssignedShard) -> str | None:
    """The shard's sha256 hex digest when the assignment carries one (``sha256:<hex>``)."""
    digest = getattr(shard, "digest", None)  # not in the v1alpha1 AssignedShard yet
    if isinstance(digest, str) and digest.startswith("sha256:"):
        return digest.removeprefix("sha256:")
    return None


def check_shard(shard: AssignedShard, size: int, sha256_hex: str) -> None:
    """Raise LoadError when the fetched data does not match what the assignment says."""
    if size != shard.bytes:
        raise LoadError(f"size mismatch: assignment says {shard.bytes} bytes, found {size}")
    want = expected_digest(shard)
    if want is not None and want != sha256_hex:
        raise LoadError(f"sha256 mismatch: want {want}, got {sha256_hex}")


def _read_file(path: Path, limit: int) -> tuple[bytes, str]:
    digest = hashlib.sha256()
    buf = bytearray()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            buf += chunk
            digest.update(chunk)
            if len(buf) > limit:
                break  # more than assigned: the size check fails without reading it all
    return bytes(buf), digest.hexdigest()


DEFAULT_ARTIFACT_ROOT = Path("/var/lib/ekko/artifacts")


def confined(path: Path, root: Path) -> Path:
    """The file a file:// URI names, if it lies under ``root`` once resolved (symlinks and
    ``..`` included); LoadError otherwise. Without it any ModelVersion author could make the
    agent read any file it can (``file:///…/../../etc/shadow``)."""
    real, base = path.resolve(), root.resolve()
    if real != base and base not in real.parents:
        raise LoadError(
            f"{path} is outside the artifact root {root}: file:// artifacts must lie under the "
            "agent's --artifact-root"
        )
    return real


class ReferenceEngine:
    """Loads shard files from file:// or http(s):// and keeps them in memory."""

    name = "reference"

    def __init__(
        self,
        infer_latency_ms: float = 1.0,
        http_timeout: float = 300.0,
        artifact_root: Path = DEFAULT_ARTIFACT_ROOT,
    ) -> None:
        self.infer_latency_ms = infer_latency_ms
        self.http_timeout = http_timeout
        self.artifact_root = artifact_root
        self._data: dict[ReplicaKey, bytes] = {}

    async def inventory(self) -> dict[ReplicaKey, int]:
        return {}

    async def load(self, shard: AssignedShard) -> int:
        location = shard_location(shard.uri, shard.shard)
        parsed = urlparse(location)
        if parsed.scheme == "file":
            path = confined(Path(unquote(parsed.path)), self.artifact_root)
            data, hexdigest = await self._load_file(path, shard.bytes)
        elif parsed.scheme in ("http", "https"):
            data, hexdigest = await self._load_http(location, shard.bytes)
        else:
            raise LoadError(
                f"the reference engine loads file:// and http(s):// URIs, not {parsed.scheme}://"
            )
        check_shard(shard, len(data), hexdigest)
        self._data[key_of(shard)] = data
        return len(data)

    async def _load_file(self, path: Path, limit: int) -> tuple[bytes, str]:
        try:
            return await asyncio.to_thread(_read_file, path, limit)
        except OSError as err:
            raise LoadError(f"cannot read {path}: {err.strerror or err}") from err

    async def _load_http(self, url: str, limit: int) -> tuple[bytes, str]:
        digest = hashlib.sha256()
        buf = bytearray()
        timeout = aiohttp.ClientTimeout(total=self.http_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as resp,
            ):
                if resp.status != 200:
                    raise LoadError(f"GET {url} returned HTTP {resp.status}")
                async for chunk in resp.content.iter_chunked(CHUNK):
                    buf += chunk
                    digest.update(chunk)
                    if len(buf) > limit:
                        break
        except (aiohttp.ClientError, TimeoutError) as err:
            raise LoadError(f"GET {url} failed: {err or type(err).__name__}") from err
        return bytes(buf), digest.hexdigest()

    async def unload(self, key: ReplicaKey) -> None:
        self._data.pop(key, None)

    async def infer(self, model: str, version: str) -> None:
        # Touch the data of the version's shards so a request depends on what was loaded.
        total = 0
        for key, data in self._data.items():
            if key.model == model and key.version == version and data:
                total += data[0]
        await asyncio.sleep(self.infer_latency_ms / 1000)


LIVE_VIEW = "live"
"""The view of the newest rows."""
BASELINE_VIEW = "baseline"
"""The view of the model's state at the baseline cut (the model-state manager's)."""


class RowReader(Protocol):
    """Where a view reads rows: the live store, or a :class:`~ekko.updates.snapshots.CutView`."""

    def get(
        self, table: str, keys: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]: ...

    def dense(self, table: str) -> npt.NDArray[np.float32]: ...


class ScoreMetrics:
    """Scoring series on the agent's registry, declared at zero per (model, view)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.scores = Counter(
            "ekko_agent_scores_total",
            "(user, item) pairs scored, by model and view.",
            ["model", "view"],
            registry=r,
        )
        self.labelled = Counter(
            "ekko_agent_scores_labelled_total",
            "Scored pairs that carried a label (click or not), by model and view.",
            ["model", "view"],
            registry=r,
        )
        self.logloss = Counter(
            "ekko_agent_score_logloss_total",
            "Sum of the logloss of labelled pairs; divided by ekko_agent_scores_labelled_total it is "
            "the mean logloss, by model and view.",
            ["model", "view"],
            registry=r,
        )
        self.paired = Counter(
            "ekko_update_paired_samples_total",
            "Labelled requests scored on both the live and the baseline view (the model-state "
            "manager's paired comparison), by model.",
            ["model"],
            registry=r,
        )
        self.paired_diff = Gauge(
            "ekko_update_paired_loss_difference",
            "Running sum of loss(live) − loss(baseline) over paired samples, in nats, by model (a "
            "gauge: it falls when the live view is better; a window takes its difference).",
            ["model"],
            registry=r,
        )
        self.paired_diff_sq = Gauge(
            "ekko_update_paired_loss_difference_squared",
            "Running sum of the squared paired loss differences, by model (the window's variance).",
            ["model"],
            registry=r,
        )
        self.paired_recent = Counter(
            "ekko_update_paired_recent_samples_total",
            "Labelled requests scored on both the live and the recent view (a cut about a window "
            "old; the model-state manager's second paired comparison), by model.",
            ["model"],
            registry=r,
        )
        self.paired_recent_diff = Gauge(
            "ekko_update_paired_recent_loss_difference",
            "Running sum of loss(live) − loss(recent view) over paired samples, in nats, by model.",
            ["model"],
            registry=r,
        )
        self.paired_recent_diff_sq = Gauge(
            "ekko_update_paired_recent_loss_difference_squared",
            "Running sum of the squared loss(live) − loss(recent view) differences, by model.",
            ["model"],
            registry=r,
        )
        self.cold = Counter(
            "ekko_agent_score_cold_keys_total",
            "Keys scored as zero rows because this replica does not hold them yet, by model and table.",
            ["model", "table"],
            registry=r,
        )
        self._declared: set[tuple[str, str]] = set()

    def declare(self, model: str, view: str = LIVE_VIEW) -> None:
        if (model, view) in self._declared:
            return
        self._declared.add((model, view))
        self.scores.labels(model, view)
        self.labelled.labels(model, view)
        self.logloss.labels(model, view)
        for table in (USER, ITEM):
            self.cold.labels(model, table)

    def observe_paired(
        self, model: str, diffs: npt.NDArray[np.float64], *, recent: bool = False
    ) -> None:
        """Count paired loss differences (``loss(live) − loss(baseline)`` per labelled pair, or
        ``loss(live) − loss(recent view)`` with ``recent``)."""
        if diffs.size == 0:
            return
        if recent:
            series = (self.paired_recent, self.paired_recent_diff, self.paired_recent_diff_sq)
        else:
            series = (self.paired, self.paired_diff, self.paired_diff_sq)
        count, total, squares = series
        count.labels(model).inc(int(diffs.size))
        total.labels(model).inc(float(diffs.sum()))
        squares.labels(model).inc(float((diffs * diffs).sum()))


@dataclass(frozen=True)
class Scored:
    """Scores of a batch of pairs, and what the replica could not answer from held rows."""

    model: str
    view: str
    scores: npt.NDArray[np.float64]
    cold_users: int
    cold_items: int
    logloss: float | None = None
    """Mean logloss of the labelled pairs, when some were labelled."""


class ScoringError(Exception):
    """A score request this engine cannot answer (unknown model, wrong shapes)."""


def model_tables(store: Store, model: str) -> dict[str, str]:
    """The model's tables by role (``user``, ``item``, ``dense``): a table belongs to a model
    through its spec, and its role is its name or the last dot-separated part of it
    (``ranker.user``), so several models share one store without colliding."""
    found: dict[str, str] = {}
    for spec in store.specs():
        if spec.model != model:
            continue
        role = spec.name.rsplit(".", 1)[-1]
        if role in (USER, ITEM, DENSE):
            found[role] = spec.name
    return found


class EmbeddingEngine:
    """Shards of recommender models whose rows live in one update store, scored with numpy.

    A load registers the shard (its rows arrive through the update node, which writes into
    :attr:`store` in place; no artifact bytes are copied); a model is servable once the agent
    holds a shard of it and its ``user`` and ``item`` tables exist. Every replica keeps every row
    of its models' tables (the update stream's key mapping is Replicated).
    """

    name = "embedding"

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        store: Store | None = None,
        infer_latency_ms: float = 0.0,
    ) -> None:
        self.store = store or Store()
        self.metrics = ScoreMetrics(registry or CollectorRegistry())
        self.infer_latency_ms = infer_latency_ms
        self._held: dict[ReplicaKey, int] = {}

    async def inventory(self) -> dict[ReplicaKey, int]:
        return {}  # the rows are re-pulled from peers after a restart

    async def load(self, shard: AssignedShard) -> int:
        self._held[key_of(shard)] = shard.bytes
        self.metrics.declare(shard.model)
        return shard.bytes

    async def unload(self, key: ReplicaKey) -> None:
        self._held.pop(key, None)

    def holds(self, model: str) -> bool:
        return any(k.model == model for k in self._held)

    def score(
        self,
        model: str,
        users: npt.ArrayLike,
        items: npt.ArrayLike,
        labels: npt.ArrayLike | None = None,
        view: str = LIVE_VIEW,
        *,
        reader: RowReader | None = None,
        count: bool = True,
    ) -> Scored:
        """Score pairs from the rows of a view (``reader``: the live store by default); count
        them and the loss of labelled ones unless ``count`` is off (a shadow score)."""
        if view not in (LIVE_VIEW, BASELINE_VIEW):
            raise ScoringError(f"unknown view {view!r}; use {LIVE_VIEW!r} or {BASELINE_VIEW!r}")
        if view == BASELINE_VIEW and reader is None:
            raise ScoringError(f"this server keeps no baseline view of model {model!r}")
        rows: RowReader = reader if reader is not None else self.store
        if not self.holds(model):
            raise ScoringError(f"this server holds no shard of model {model!r}")
        tables = model_tables(self.store, model)
        if USER not in tables or ITEM not in tables:
            raise ScoringError(f"model {model!r} has no user and item tables here yet")
        us = np.asarray(users, dtype=np.int64).reshape(-1)
        its = np.asarray(items, dtype=np.int64).reshape(-1)
        if us.shape != its.shape:
            raise ScoringError(f"{us.size} users but {its.size} items")
        u, u_found = rows.get(tables[USER], us)
        v, v_found = rows.get(tables[ITEM], its)
        if u.shape[1] != v.shape[1]:
            raise ScoringError(f"user rows have {u.shape[1]} floats, item rows {v.shape[1]}")
        dense = None
        if DENSE in tables:
            dense = self._dense(rows, tables[DENSE])
        scores = score_rows(u, v, dense)
        cold_u, cold_i = int((~u_found).sum()), int((~v_found).sum())
        if not count:
            return Scored(model, view, scores, cold_u, cold_i)
        m = self.metrics
        m.declare(model, view)
        m.scores.labels(model, view).inc(us.size)
        m.cold.labels(model, USER).inc(cold_u)
        m.cold.labels(model, ITEM).inc(cold_i)
        loss = None
        if labels is not None:
            ys = np.asarray(labels, dtype=np.float64).reshape(-1)
            if ys.shape != us.shape:
                raise ScoringError(f"{ys.size} labels for {us.size} pairs")
            labelled = ~np.isnan(ys)
            if labelled.any():
                loss = logloss(ys[labelled], scores[labelled])
                m.labelled.labels(model, view).inc(int(labelled.sum()))
                m.logloss.labels(model, view).inc(loss * int(labelled.sum()))
        return Scored(model, view, scores, cold_u, cold_i, loss)

    def _dense(self, rows: RowReader, table: str) -> npt.NDArray[np.float32]:
        spec = self.store.spec(table)
        if spec.kind == "dense":
            out: npt.NDArray[np.float32] = np.atleast_2d(rows.dense(table))
            return out
        values, found = rows.get(table, np.arange(2))
        return values[: 2 if found[1] else 1]

    async def infer(self, model: str, version: str) -> None:
        # Read a row, so /infer also depends on the held tables (/score is the real path).
        tables = model_tables(self.store, model)
        if USER in tables:
            self.store.get(tables[USER], [0])
        if self.infer_latency_ms:
            await asyncio.sleep(self.infer_latency_ms / 1000)


def make_engine(
    kind: str,
    *,
    sim_bandwidth: float,
    registry: CollectorRegistry | None = None,
    artifact_root: Path = DEFAULT_ARTIFACT_ROOT,
) -> Engine:
    if kind == "sim":
        return SimEngine(bandwidth=sim_bandwidth)
    if kind == "reference":
        return ReferenceEngine(artifact_root=artifact_root)
    if kind == "embedding":
        return EmbeddingEngine(registry)
    raise ValueError(f"unknown engine {kind!r}; expected sim, reference or embedding")
