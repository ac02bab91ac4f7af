"""Pieces the model-state manager's e2e test and cluster benchmark share: a publisher on its own
event loop (the test decides when a harmful update happens), the clean rows and the labels the
clean model gets mostly right, /score calls, and a labelled traffic generator."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from e2e.agents import AgentFleet, free_port
from e2e.objects import Api
from ekko.updates.publisher import Publisher
from ekko.updates.scoring import score_rows
from ekko.updates.store import TableSpec

T = TypeVar("T")
DIM = 8
USERS = ITEMS = 40
PAIRS = [(u, (u * 7 + 3) % ITEMS) for u in range(USERS)]
TRICKLE = np.arange(1000, 1010)


class LivePublisher:
    """A publisher on its own event loop in a thread: the origin of the stream."""

    def __init__(self, model: str = "ranker") -> None:
        self.model = model
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pub = Publisher(
            7,
            [
                TableSpec(f"{model}.user", DIM + 1, model=model),
                TableSpec(f"{model}.item", DIM + 1, model=model),
            ],
            region="train",
        )
        port = free_port()
        self.call(lambda: None)
        asyncio.run_coroutine_threadsafe(self.pub.start("127.0.0.1", port), self.loop).result(10)
        self.url = f"http://127.0.0.1:{port}"

    def call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def publish(self, table: str, keys: Any, values: Any) -> None:
        self.call(lambda: self.pub.publish(table, keys, values))

    def close(self) -> None:
        async def shutdown() -> None:
            await self.pub.stop()
            # Pulls still parked in a handler (agents long-poll) end here, not in the garbage
            # collector's "Task was destroyed but it is pending!" at exit.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


def rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.4, (n, DIM + 1)).astype(np.float32)


def clean_scores() -> np.ndarray:
    u, i = zip(*PAIRS, strict=True)
    return score_rows(rows(1, USERS)[list(u)], rows(2, ITEMS)[list(i)])


LABELS = (clean_scores() > 0.5).astype(int)
"""Labels the clean model gets mostly right: a harmful update shows as a loss increase."""


def score(
    url: str, labelled: bool = True, view: str | None = None, model: str = "ranker"
) -> dict[str, Any] | None:
    body: dict[str, Any] = {
        "model": model,
        "requests": [
            {"user": u, "item": i, **({"label": int(y)} if labelled else {})}
            for (u, i), y in zip(PAIRS, LABELS, strict=True)
        ],
    }
    if view is not None:
        body["view"] = view
    request = urllib.request.Request(
        url + "/score", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out
    except (urllib.error.URLError, OSError):
        return None


class Traffic:
    """Labelled /score requests to every server of the model, as an online service sends them."""

    def __init__(self, urls: Callable[[], list[str]], model: str = "ranker") -> None:
        self.urls = urls
        self.model = model
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for url in self.urls():
                score(url, model=self.model)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def stream_manifest(source: str, health: dict[str, Any] | None = None) -> dict[str, Any]:
    """An UpdateStream of the ``ranker`` model's user and item tables, exact values on the wire
    (so every replica can be compared with the publisher), with ``spec.health`` when given."""
    doc: dict[str, Any] = {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "UpdateStream",
        "metadata": {"name": "ranker"},
        "spec": {
            "model": "ranker",
            "source": {"endpoints": [source], "region": "train"},
            "tables": [
                {"name": "ranker.user", "dim": DIM + 1},
                {"name": "ranker.item", "dim": DIM + 1},
            ],
            "compression": {"values": "Float32", "codec": "Zstd"},
            "topology": {"idlePullInterval": "5s"},
        },
    }
    if health is not None:
        doc["spec"]["health"] = health
    return doc


def start_publisher(model: str = "ranker") -> tuple[LivePublisher, Callable[[], None]]:
    """A publisher with the clean rows and a trickle on other keys every 0.25 s (so cuts differ);
    returns it and its stop function."""
    live = LivePublisher(model)
    stop = threading.Event()

    def trickle() -> None:
        j = 0
        while not stop.wait(0.25):
            j += 1
            live.publish(f"{model}.user", TRICKLE, rows(3, len(TRICKLE)) + 0.001 * j)

    live.publish(f"{model}.user", np.arange(USERS), rows(1, USERS))
    live.publish(f"{model}.item", np.arange(ITEMS), rows(2, ITEMS))
    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(5)
        live.close()

    return live, close


def holders(api: Api, model: str = "ranker") -> list[str]:
    """The servers whose assignments hold a shard of ``model``, by name."""
    return sorted(
        a.metadata.name for a in api.assignments() if any(s.model == model for s in a.spec.shards)
    )


def urls_of(fleet: AgentFleet, names: list[str]) -> Callable[[], list[str]]:
    """The agents' URLs of these servers, as of each call (an agent restarting is left out)."""

    def urls() -> list[str]:
        return [fleet.url(n) for n in names if n in fleet.pods()]

    return urls
