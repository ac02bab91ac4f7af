"""Workloads of the update benchmark: MovieLens-100K in time order and a seeded drifting stream.

MovieLens-100K ships as a plain TSV inside the ``recbole`` 1.2.1 wheel on PyPI. The bench fetches
the wheel with ``pip download --no-deps`` into ``~/.cache/ekko/data`` (once) and reads the TSV with
:mod:`zipfile`; recbole is never installed (it pulls torch) and the data is never committed (its
licence forbids redistribution). A click is a rating of 4 or more.

The synthetic stream is for CI and ablations: Zipf popularity whose head rotates, items born over
time with a rise-and-decay life, new users at a fixed rate who are most active right after they
arrive, user interests that drift, and an optional label-poisoning knob.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

CACHE = Path(os.environ.get("EKKO_DATA_CACHE", Path.home() / ".cache" / "ekko" / "data"))
RECBOLE = "recbole==1.2.1"
WHEEL = "recbole-1.2.1-py3-none-any.whl"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


@dataclass(frozen=True)
class Stream:
    """Events in time order: ``users[j]`` saw ``items[j]`` and clicked iff ``labels[j]``."""

    name: str
    users: NDArray[np.int64]
    items: NDArray[np.int64]
    labels: NDArray[np.int8]
    n_users: int
    n_items: int

    def __len__(self) -> int:
        return int(self.users.size)

    def head(self, n: int) -> Stream:
        """The first ``n`` events (key spaces unchanged)."""
        return Stream(
            self.name, self.users[:n], self.items[:n], self.labels[:n], self.n_users, self.n_items
        )


def fetch_recbole_wheel(cache: Path = CACHE) -> Path:
    """The recbole wheel in ``cache``, downloaded with ``pip download --no-deps`` if missing."""
    wheel = cache / WHEEL
    if wheel.exists():
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", RECBOLE, "-d", str(cache)]
    subprocess.run(cmd, check=True)
    if not wheel.exists():
        found = sorted(cache.glob("recbole-1.2.1*.whl"))
        if not found:
            raise FileNotFoundError(f"pip download left no recbole wheel in {cache}")
        wheel = found[0]
    return wheel


def parse_inter(text: str, name: str = "ml-100k", click_threshold: float = 4.0) -> Stream:
    """Parse a RecBole ``.inter`` TSV (user, item, rating, timestamp with a typed header) into a
    time-ordered :class:`Stream`; keys are numbered in order of first appearance."""
    lines = text.splitlines()
    if not lines:
        raise ValueError("empty .inter file")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    try:
        cu, ci, cr, ct = (header.index(c) for c in ("user_id", "item_id", "rating", "timestamp"))
    except ValueError as exc:
        raise ValueError(f"unexpected .inter header {lines[0]!r}") from exc
    rows = [ln.split("\t") for ln in lines[1:] if ln.strip()]
    ts = np.array([float(r[ct]) for r in rows], dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    user_ids: dict[str, int] = {}
    item_ids: dict[str, int] = {}
    users = np.empty(len(rows), dtype=np.int64)
    items = np.empty(len(rows), dtype=np.int64)
    labels = np.empty(len(rows), dtype=np.int8)
    for j, k in enumerate(order):
        r = rows[k]
        users[j] = user_ids.setdefault(r[cu], len(user_ids))
        items[j] = item_ids.setdefault(r[ci], len(item_ids))
        labels[j] = 1 if float(r[cr]) >= click_threshold else 0
    return Stream(name, users, items, labels, len(user_ids), len(item_ids))


def movielens_100k(cache: Path = CACHE) -> Stream:
    """MovieLens-100K, time-ordered, click = rating >= 4 (fetches the wheel on first use)."""
    wheel = fetch_recbole_wheel(cache)
    with zipfile.ZipFile(wheel) as zf, zf.open(ML100K_MEMBER) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8").read()
    return parse_inter(text, "ml-100k")


def synthetic_stream(
    n_events: int = 40_000,
    seed: int = 0,
    *,
    n_items0: int = 400,
    n_users0: int = 300,
    item_births_per_1k: float = 15.0,
    user_births_per_1k: float = 20.0,
    dim: int = 8,
    zipf_s: float = 1.05,
    head_rotate_every: int = 4_000,
    item_rise: float = 800.0,
    item_decay: float = 12_000.0,
    user_burst: float = 1500.0,
    drift: float = 0.03,
    chunk: int = 250,
    signal: float = 3.0,
    poison_from: int | None = None,
    poison_rate: float = 0.0,
) -> Stream:
    """A seeded drifting click stream (see the module docstring). Deterministic per ``seed``."""
    rng = np.random.default_rng(seed)
    n_items_max = n_items0 + int(np.ceil(n_events * item_births_per_1k / 1000)) + 1
    n_users_max = n_users0 + int(np.ceil(n_events * user_births_per_1k / 1000)) + 1
    item_vec = rng.normal(0, 1, (n_items_max, dim)) / np.sqrt(dim)
    item_q = rng.normal(0, 0.6, n_items_max)
    item_birth = np.concatenate(
        (
            -rng.uniform(0, item_decay, n_items0),
            np.linspace(0, n_events, n_items_max - n_items0, endpoint=False),
        )
    )
    item_rank = rng.permutation(n_items_max)  # Zipf rank of each item; rotates over time
    user_vec = rng.normal(0, 1, (n_users_max, dim)) / np.sqrt(dim)
    user_bias = rng.normal(0, 0.6, n_users_max)
    user_act = rng.lognormal(0, 0.8, n_users_max)
    user_birth = np.concatenate(
        (
            -rng.uniform(0, 5 * user_burst, n_users0),
            np.linspace(0, n_events, n_users_max - n_users0, endpoint=False),
        )
    )
    users = np.empty(n_events, dtype=np.int64)
    items = np.empty(n_events, dtype=np.int64)
    labels = np.empty(n_events, dtype=np.int8)
    rotate_by = max(1, n_items_max // 7)
    for start in range(0, n_events, chunk):
        stop = min(n_events, start + chunk)
        t = float(start)
        if start and start % head_rotate_every < chunk:
            item_rank = (item_rank + rotate_by) % n_items_max
        # items alive now, weighted by Zipf rank x life curve
        age = t - item_birth
        alive = age >= 0
        life = np.where(
            alive, (1 - np.exp(-np.maximum(age, 0) / item_rise)) * np.exp(-age / item_decay), 0.0
        )
        w_items = life / (1.0 + item_rank) ** zipf_s
        w_items /= w_items.sum()
        # users born by now; new users burst right after birth
        uage = t - user_birth
        born = uage >= 0
        w_users = np.where(
            born, user_act * (0.15 + 3.0 * np.exp(-np.maximum(uage, 0) / user_burst)), 0
        )
        w_users /= w_users.sum()
        n = stop - start
        us = rng.choice(n_users_max, size=n, p=w_users)
        its = rng.choice(n_items_max, size=n, p=w_items)
        z = (
            signal * np.einsum("ij,ij->i", user_vec[us], item_vec[its])
            + item_q[its]
            + user_bias[us]
        )
        y = rng.random(n) < 1.0 / (1.0 + np.exp(-z))
        if poison_from is not None and poison_rate > 0:
            idx = np.arange(start, stop)
            flip = (idx >= poison_from) & (rng.random(n) < poison_rate)
            y = np.where(flip, ~y, y)
        users[start:stop], items[start:stop], labels[start:stop] = us, its, y
        # interests drift
        user_vec += rng.normal(0, drift, user_vec.shape) / np.sqrt(dim)
    # renumber keys by first appearance, like the MovieLens loader
    _, ufirst, uinv = np.unique(users, return_index=True, return_inverse=True)
    _, ifirst, iinv = np.unique(items, return_index=True, return_inverse=True)
    urank = np.argsort(np.argsort(ufirst))
    irank = np.argsort(np.argsort(ifirst))
    users = urank[uinv].astype(np.int64)
    items = irank[iinv].astype(np.int64)
    return Stream(f"synthetic-s{seed}", users, items, labels, int(ufirst.size), int(ifirst.size))
