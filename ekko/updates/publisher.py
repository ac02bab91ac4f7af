"""The origin of writes: a small library a trainer calls, serving what it wrote to nodes.

A trainer keeps training as it does today and, whenever rows change, calls
:meth:`Publisher.publish` (embedding rows) or :meth:`Publisher.publish_dense` (a whole dense
tensor). The publisher stamps each row with a version ``(epoch, origin, seq)`` — seq drawn from
the wall clock in microseconds and strictly increasing, so a restarted publisher never reuses one
and concurrent origins resolve last-writer-wins — keeps only each row's newest value, and serves
``POST /v1/updates/pull`` like any node: leaders pull from it, followers from them.

``python -m ekko.updates.publisher --replay FILE`` (also ``ekko publish --replay FILE``) replays a
recorded stream for demos and tests. The file is JSON lines::

    {"declare": {"table": "emb", "dim": 16, "model": "ranker", "weight": 1.0, "shards": 1}}
    {"t": 0.00, "table": "emb", "key": 42, "values": [0.1, ...]}
    {"t": 0.25, "table": "emb", "keys": [1, 2], "values": [[...], [...]]}

``t`` is seconds from the start of the replay (lines in order); consecutive lines with the same
``t`` and table are published together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from ekko.updates.priority import Scheduler, SchedulerConfig
from ekko.updates.snapshots import SOURCE_RESTORE_SEQ, ModelCuts, vectors_json
from ekko.updates.store import ShardId, Store, TableSpec
from ekko.updates.versions import VersionVector
from ekko.updates.wire import DEFAULT_PORT, UpdateMetrics, UpdateServer, parse_listen

log = logging.getLogger(__name__)

MAX_DENSE_CHUNK = 4096
"""Elements per chunk of a dense tensor declared on first publish."""


class Publisher:
    """The origin store plus its pull endpoint. Call from the event loop's thread."""

    def __init__(
        self,
        origin: int,
        tables: Sequence[TableSpec] = (),
        *,
        epoch: int = 0,
        region: str = "",
        registry: CollectorRegistry | None = None,
        scheduler: SchedulerConfig | None = None,
        cache_capacity: int = 65536,
        clock: Callable[[], float] = time.time,
        undo_cap_bytes: int = 256 << 20,
    ) -> None:
        if origin < 0:
            raise ValueError("origin must be a non-negative integer")
        self.origin = origin
        self.epoch = epoch
        """The epoch rows are published at (a model restored on its own has its own)."""
        self.epochs: dict[str, int] = {}
        """Per model restored on its own (a stream's rollback): the epoch its rows carry."""
        self.clock = clock
        self.store = Store(cache_capacity=cache_capacity)
        self.metrics = UpdateMetrics(registry or CollectorRegistry(), region)
        self.server = UpdateServer(self.store, Scheduler(scheduler), self.metrics)
        self.cuts = ModelCuts(undo_cap_bytes)
        """Cuts of the origin's own tables per model, so a rollback of a model's state restores
        the source too (the model-state manager posts the same cut and restore as to the
        servers); another model published here keeps its state and epoch."""
        self.server.control = self
        self._seq = 0
        for spec in tables:
            self.declare(spec)

    def epoch_of(self, model: str) -> int:
        """The epoch ``model``'s rows are published at."""
        return self.epochs.get(model, self.epoch)

    def declare(self, spec: TableSpec) -> None:
        self.store.declare(spec)
        self.metrics.declare_model(spec.model)

    def _next_seqs(self, n: int) -> npt.NDArray[np.int64]:
        start = max(self._seq + 1, int(self.clock() * 1e6))
        self._seq = start + n - 1
        return np.arange(start, start + n, dtype=np.int64)

    def publish(self, table: str, keys: npt.ArrayLike, values: npt.ArrayLike) -> int:
        """Publish new values of ``keys`` (one row of ``dim`` floats each); returns the last seq.
        Values must be finite: a NaN row is refused here rather than sent to every server."""
        spec = self.store.spec(table)
        k = np.asarray(keys, dtype=np.int64).reshape(-1)
        v = np.asarray(values, dtype=np.float32).reshape(len(k), spec.dim)
        if not np.isfinite(v).all():
            raise ValueError(f"refusing non-finite values for table {table!r}")
        if len(k) == 0:
            return self._seq
        seqs = self._next_seqs(len(k))
        self.cuts.before_write(self.store, table, k)
        self.store.write(
            table,
            k,
            v,
            epoch=self.epoch_of(spec.model),
            origin=self.origin,
            seqs=seqs,
            publish_time=self.clock(),
        )
        self.server.notifier.notify()
        return int(seqs[-1])

    def publish_dense(self, name: str, tensor: npt.ArrayLike, model: str = "") -> int:
        """Publish a whole dense tensor, cut into chunks (declared on first publish)."""
        t = np.asarray(tensor, dtype=np.float32)
        if not self.store.has_table(name):
            dim = max(1, min(t.size, MAX_DENSE_CHUNK))
            self.declare(TableSpec(name, dim, kind="dense", shape=tuple(t.shape), model=model))
        spec = self.store.spec(name)
        if tuple(t.shape) != spec.shape:
            raise ValueError(f"dense {name!r} has shape {spec.shape}, got {tuple(t.shape)}")
        flat = np.zeros(spec.n_chunks * spec.dim, dtype=np.float32)
        flat[: t.size] = t.reshape(-1)
        return self.publish(name, np.arange(spec.n_chunks), flat.reshape(spec.n_chunks, spec.dim))

    def take_cut(
        self,
        cut_id: int,
        vectors: Mapping[ShardId, VersionVector] | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Start cut ``cut_id`` of the origin's tables of ``model`` (None: every table; the same
        id again is a no-op) and answer its vectors: what the servers' cuts are named by
        (announced ``vectors`` are ignored: the origin's own state is the cut)."""
        cuts = self.cuts.log(model)
        if not cuts.has(cut_id):
            cuts.take(self.store, cut_id, now=self.clock())
            log.info("Publisher took cut %d%s", cut_id, f" of model {model}" if model else "")
        return {
            "cut": cut_id,
            "vectors": vectors_json(cuts.cut(cut_id).vectors),
            "retained": [c.id for c in cuts.cuts()],
        }

    def restore(
        self, cut_id: int, epoch: int | None = None, model: str | None = None
    ) -> dict[str, Any]:
        """Restore the origin's tables of ``model`` (None: every table) to cut ``cut_id`` at
        ``epoch`` and publish them at that epoch from now on (KeyError for an unknown cut,
        ValueError for an epoch that does not fence)."""
        result = self.cuts.restore(
            self.store, cut_id, model=model, now=self.clock(), epoch=epoch, seq=SOURCE_RESTORE_SEQ
        )
        if model is None:
            self.epoch = result.epoch
            self.epochs = {m: max(e, result.epoch) for m, e in self.epochs.items()}
        else:
            self.epochs[model] = result.epoch
        self.server.notifier.notify()
        log.info(
            "Publisher restored cut %d%s at epoch %d",
            cut_id,
            f" of model {model}" if model else "",
            result.epoch,
        )
        return {"cut": cut_id, "epoch": result.epoch, "rows": dict(result.rows)}

    async def start(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> int:
        """Serve the pull endpoint; returns the bound port."""
        return await self.server.start(host, port)

    async def stop(self) -> None:
        await self.server.stop()


# --- replay -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayStep:
    t: float
    table: str
    keys: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]


def read_replay(path: Path) -> tuple[list[TableSpec], list[ReplayStep]]:
    """Parse a replay file (see the module docstring)."""
    specs: list[TableSpec] = []
    steps: list[ReplayStep] = []
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        if not pending:
            return
        keys: list[int] = []
        values: list[Any] = []
        for line in pending:
            if "keys" in line:
                keys.extend(int(k) for k in line["keys"])
                values.extend(line["values"])
            else:
                keys.append(int(line["key"]))
                values.append(line["values"])
        steps.append(
            ReplayStep(
                float(pending[0]["t"]),
                str(pending[0]["table"]),
                np.asarray(keys, dtype=np.int64),
                np.asarray(values, dtype=np.float32).reshape(len(keys), -1),
            )
        )
        pending.clear()

    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            if "declare" in line:
                d = line["declare"]
                specs.append(
                    TableSpec(
                        str(d["table"]),
                        int(d["dim"]),
                        d.get("kind", "embedding"),
                        int(d.get("shards", 1)),
                        str(d.get("model", "")),
                        float(d.get("weight", 1.0)),
                        tuple(d.get("shape", ())),
                    )
                )
                continue
            if not {"t", "table", "values"} <= line.keys() or not {"key", "keys"} & line.keys():
                raise ValueError("an update line needs t, table, key or keys, and values")
            float(line["t"])
            if pending and (line["t"] != pending[0]["t"] or line["table"] != pending[0]["table"]):
                flush()
            pending.append(line)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}:{n}: bad replay line: {e}") from e
    try:
        flush()
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad replay line: {e}") from e
    return specs, steps


def _steps_in_time(steps: Sequence[ReplayStep], speed: float) -> Iterator[tuple[float, ReplayStep]]:
    for s in steps:
        yield (s.t / speed if speed > 0 and math.isfinite(speed) else 0.0), s


async def replay(publisher: Publisher, steps: Sequence[ReplayStep], speed: float = 1.0) -> int:
    """Publish ``steps`` at their times (``speed`` × real time; 0 or inf: as fast as possible).
    Returns the rows published."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    rows = 0
    for at, step in _steps_in_time(steps, speed):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        publisher.publish(step.table, step.keys, step.values)
        rows += len(step.keys)
    return rows


async def run_replay(
    path: Path, listen: str, origin: int, *, speed: float, hold: float, region: str = ""
) -> int:
    """Serve, replay ``path``, keep serving ``hold`` seconds (negative: forever), stop."""
    specs, steps = read_replay(path)
    publisher = Publisher(origin, specs, region=region)
    host, port = parse_listen(listen)
    bound = await publisher.start(host, port)
    log.info("Publisher %d listening on %s:%d; replaying %d steps", origin, host, bound, len(steps))
    try:
        rows = await replay(publisher, steps, speed)
        log.info("Replayed %d rows from %s", rows, path)
        if hold < 0:
            await asyncio.Event().wait()
        await asyncio.sleep(hold)
    finally:
        await publisher.stop()
    return rows


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="python -m ekko.updates.publisher", description="Replay updates as an origin."
    )
    p.add_argument("--replay", type=Path, required=True, help="JSON-lines file of updates")
    p.add_argument(
        "--listen", default=f"0.0.0.0:{DEFAULT_PORT}", help="host:port to serve pulls on"
    )
    p.add_argument("--origin", type=int, default=1, help="this origin's id")
    p.add_argument("--region", default="", help="this origin's region (metric label)")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed (0: as fast as possible)")
    p.add_argument(
        "--hold",
        type=float,
        default=-1.0,
        help="seconds to keep serving after the replay (-1: forever)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(
        run_replay(
            args.replay,
            args.listen,
            args.origin,
            speed=args.speed,
            hold=args.hold,
            region=args.region,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
