"""Shared helpers of the update tests: a pull exchanged between two in-memory stores."""

from __future__ import annotations

import numpy as np

from ekko.updates.codec import Encoding, decode_response, encode_response
from ekko.updates.priority import Scheduler
from ekko.updates.store import PullResponse, Store, ValueDType


def pull(
    down: Store,
    up: Store,
    scheduler: Scheduler,
    budget: int = 1 << 40,
    dtype: ValueDType = "float32",
    zstd: bool = False,
) -> PullResponse:
    """One pull of ``down`` from ``up`` through the codec (the response is not applied)."""
    response = scheduler.respond(up, down.pull_request(budget, dtype, zstd))
    return decode_response(encode_response(response, Encoding(dtype, zstd)))


def deliver(down: Store, response: PullResponse) -> int:
    """Apply a response (its residual rows against what ``response.source`` delivered before);
    returns the rows applied."""
    return sum(r.applied for r in down.apply_response(response))


def versions(store: Store) -> dict[tuple[str, int], tuple[int, int, int]]:
    out = {}
    for spec in store.specs():
        snap = store.snapshot(spec.name)
        for k, e, o, s in zip(snap.keys, snap.epochs, snap.origins, snap.seqs, strict=True):
            out[(spec.name, int(k))] = (int(e), int(s), int(o))
    return out


def rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return rng.normal(size=(n, dim)).astype(np.float32)
