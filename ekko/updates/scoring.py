"""A small, real recommender scorer in pure numpy: online logistic matrix factorisation.

``score(user, item) = sigmoid(u·v + b_u + b_i + b)`` with one user row ``[u (d floats), b_u]`` and one
item row ``[v, b_i]`` per key and a global bias in the one-row ``dense`` table. An optional tiny MLP
head (``hidden > 0``) adds ``w2·relu(W1 (u ⊙ v) + b1)`` to the logit; its weights live in the dense
table too (row 0 is the global bias, row 1 the flattened head).

The trainer (:meth:`LogisticMF.step`, :meth:`LogisticMF.train_batch`) does plain SGD on the
logistic loss and returns what it changed as :class:`RowUpdate` s (table, keys, new values): exactly
what a publisher sends and a replica applies. A serving replica holds the same tables and applies
rows with :meth:`LogisticMF.apply`; a key it has never received scores as a zero row.

:func:`auc` (rank-based, ties averaged) and :func:`logloss` measure served quality. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

USER = "user"
ITEM = "item"
DENSE = "dense"
EPS = 1e-7

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True)
class RowUpdate:
    """New values of some rows of one table: ``values[j]`` is the whole row ``keys[j]``."""

    table: str
    keys: I64
    values: F32


def sigmoid(z: ArrayLike) -> F64:
    """Numerically stable logistic function."""
    x = np.asarray(z, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) statistic; tied scores share ranks.

    Returns NaN when only one class is present.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average rank (1-based) for each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    rank_sum = float(ranks[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def pair_logloss(labels: ArrayLike, probs: ArrayLike) -> F64:
    """Binary cross-entropy of each pair, probabilities clipped to [EPS, 1 - EPS]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), EPS, 1 - EPS)
    out: F64 = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return out


def logloss(labels: ArrayLike, probs: ArrayLike) -> float:
    """Mean binary cross-entropy, probabilities clipped to [EPS, 1 - EPS]."""
    losses = pair_logloss(labels, probs)
    return float(losses.mean()) if losses.size else float("nan")


def row_logits(
    user_rows: NDArray[np.floating], item_rows: NDArray[np.floating], global_bias: float = 0.0
) -> F64:
    """Logits of many (user row, item row) pairs of a model without a head (rows ``[emb, bias]``)."""
    u = np.asarray(user_rows, dtype=np.float64)
    v = np.asarray(item_rows, dtype=np.float64)
    dots: F64 = np.einsum("ij,ij->i", u[:, :-1], v[:, :-1])
    return dots + u[:, -1] + v[:, -1] + global_bias


class LogisticMF:
    """Online logistic matrix factorisation (optionally with a tiny MLP head), trained by SGD."""

    def __init__(
        self,
        dim: int = 16,
        *,
        lr: float = 0.05,
        l2: float = 1e-4,
        init_scale: float = 0.1,
        hidden: int = 0,
        seed: int = 0,
        capacity: int = 1024,
    ) -> None:
        if dim <= 0 or hidden < 0 or capacity <= 0:
            raise ValueError("dim and capacity must be positive, hidden non-negative")
        self.dim = dim
        self.lr = lr
        self.l2 = l2
        self.init_scale = init_scale
        self.hidden = hidden
        self.rng = np.random.default_rng(seed)
        self.tables: dict[str, F32] = {
            USER: np.zeros((capacity, dim + 1), dtype=np.float32),
            ITEM: np.zeros((capacity, dim + 1), dtype=np.float32),
        }
        self.known: dict[str, NDArray[np.bool_]] = {
            USER: np.zeros(capacity, dtype=bool),
            ITEM: np.zeros(capacity, dtype=bool),
        }
        head = hidden * dim + hidden + hidden if hidden else 0
        dense = np.zeros((2 if hidden else 1, max(1, head)), dtype=np.float32)
        if hidden:
            dense[1] = self.rng.normal(0.0, 1.0 / np.sqrt(dim), head).astype(np.float32)
            dense[1, hidden * dim : hidden * dim + hidden] = 0.0  # b1
        self.tables[DENSE] = dense

    # -- tables --------------------------------------------------------------------------------

    def width(self, table: str) -> int:
        """Floats per row of ``table``."""
        return int(self.tables[table].shape[1])

    def _grow(self, table: str, key: int) -> None:
        rows = self.tables[table]
        if key < rows.shape[0]:
            return
        n = max(key + 1, 2 * rows.shape[0])
        grown = np.zeros((n, rows.shape[1]), dtype=np.float32)
        grown[: rows.shape[0]] = rows
        self.tables[table] = grown
        known = np.zeros(n, dtype=bool)
        known[: self.known[table].shape[0]] = self.known[table]
        self.known[table] = known

    def _touch(self, table: str, key: int) -> None:
        """Initialise a row on first training touch (random embedding, zero bias)."""
        if key < 0:
            raise ValueError(f"negative key {key}")
        self._grow(table, key)
        if not self.known[table][key]:
            row = self.tables[table][key]
            row[:-1] = self.rng.normal(0.0, self.init_scale, self.dim)
            row[-1] = 0.0
            self.known[table][key] = True

    def apply(self, update: RowUpdate) -> None:
        """Overwrite rows with received values (a serving replica's apply)."""
        keys = np.asarray(update.keys, dtype=np.int64)
        if keys.size == 0:
            return
        if update.table == DENSE:
            self.tables[DENSE][keys] = update.values
            return
        self._grow(update.table, int(keys.max()))
        self.tables[update.table][keys] = update.values
        self.known[update.table][keys] = True

    def row(self, table: str, key: int) -> F32:
        """A copy of one row (zeros for a key never seen)."""
        rows = self.tables[table]
        if 0 <= key < rows.shape[0]:
            out: F32 = rows[key].copy()
            return out
        return np.zeros(rows.shape[1], dtype=np.float32)

    # -- scoring -------------------------------------------------------------------------------

    def _head_parts(self) -> tuple[F64, F64, F64]:
        h, d = self.hidden, self.dim
        w = self.tables[DENSE][1].astype(np.float64)
        return w[: h * d].reshape(h, d), w[h * d : h * d + h], w[h * d + h : h * d + 2 * h]

    def logits(self, users: ArrayLike, items: ArrayLike) -> F64:
        """Logits of many pairs; unknown keys score as zero rows."""
        us = np.asarray(users, dtype=np.int64).ravel()
        its = np.asarray(items, dtype=np.int64).ravel()
        u = self._rows(USER, us)
        v = self._rows(ITEM, its)
        z = row_logits(u, v, float(self.tables[DENSE][0, 0]))
        if self.hidden:
            w1, b1, w2 = self._head_parts()
            x = u[:, :-1] * v[:, :-1]
            z = z + np.maximum(x @ w1.T + b1, 0.0) @ w2
        return z

    def _rows(self, table: str, keys: I64) -> F64:
        rows = self.tables[table]
        ok = (keys >= 0) & (keys < rows.shape[0])
        out = np.zeros((keys.size, rows.shape[1]), dtype=np.float64)
        out[ok] = rows[keys[ok]]
        return out

    def score(self, user: int, item: int) -> float:
        """Click probability of one (user, item) pair."""
        return float(sigmoid(self.logits([user], [item]))[0])

    def score_many(self, users: ArrayLike, items: ArrayLike) -> F64:
        """Click probabilities of many pairs."""
        return sigmoid(self.logits(users, items))

    # -- training ------------------------------------------------------------------------------

    def step(self, user: int, item: int, label: float) -> tuple[float, list[RowUpdate]]:
        """One SGD step on one event. Returns the prediction made *before* the step (progressive
        validation) and the rows the step changed."""
        self._touch(USER, user)
        self._touch(ITEM, item)
        ut, it, dense = self.tables[USER], self.tables[ITEM], self.tables[DENSE]
        u = ut[user].astype(np.float64)
        v = it[item].astype(np.float64)
        eu, ev = u[:-1], v[:-1]
        z = float(eu @ ev + u[-1] + v[-1] + dense[0, 0])
        if self.hidden:
            w1, b1, w2 = self._head_parts()
            x = eu * ev
            a = w1 @ x + b1
            r = np.maximum(a, 0.0)
            z += float(r @ w2)
        p = 1.0 / (1.0 + np.exp(-z)) if z >= 0 else np.exp(z) / (1.0 + np.exp(z))
        g = p - float(label)
        lr, l2 = self.lr, self.l2
        grad_eu = g * ev + l2 * eu
        grad_ev = g * eu + l2 * ev
        if self.hidden:
            da = g * w2 * (a > 0)
            dx = w1.T @ da
            grad_eu = grad_eu + dx * ev
            grad_ev = grad_ev + dx * eu
            h, d = self.hidden, self.dim
            head = dense[1].astype(np.float64)
            head[: h * d] -= lr * (np.outer(da, x).ravel() + l2 * head[: h * d])
            head[h * d : h * d + h] -= lr * da
            head[h * d + h :] -= lr * (g * r + l2 * head[h * d + h :])
            dense[1] = head
        ut[user, :-1] = eu - lr * grad_eu
        ut[user, -1] = u[-1] - lr * g
        it[item, :-1] = ev - lr * grad_ev
        it[item, -1] = v[-1] - lr * g
        dense[0, 0] -= lr * 0.1 * g
        k0 = np.zeros(1, dtype=np.int64)
        dense_keys = np.arange(dense.shape[0], dtype=np.int64) if self.hidden else k0
        updates = [
            RowUpdate(USER, np.array([user], dtype=np.int64), ut[user : user + 1].copy()),
            RowUpdate(ITEM, np.array([item], dtype=np.int64), it[item : item + 1].copy()),
            RowUpdate(DENSE, dense_keys, dense[dense_keys].copy()),
        ]
        return float(p), updates

    def train_batch(
        self, users: ArrayLike, items: ArrayLike, labels: ArrayLike
    ) -> tuple[F64, list[RowUpdate]]:
        """SGD over a mini-batch, event by event; the rows changed are reported once each with
        their value after the batch (what a coalescing publisher sends)."""
        us = np.asarray(users, dtype=np.int64).ravel()
        its = np.asarray(items, dtype=np.int64).ravel()
        ys = np.asarray(labels, dtype=np.float64).ravel()
        preds = np.empty(us.size, dtype=np.float64)
        for j in range(us.size):
            preds[j], _ = self.step(int(us[j]), int(its[j]), float(ys[j]))
        updates: list[RowUpdate] = []
        for table, keys in ((USER, np.unique(us)), (ITEM, np.unique(its))):
            if keys.size:
                updates.append(RowUpdate(table, keys, self.tables[table][keys].copy()))
        dense = self.tables[DENSE]
        dense_keys = np.arange(dense.shape[0], dtype=np.int64)
        updates.append(RowUpdate(DENSE, dense_keys, dense.copy()))
        return preds, updates


def head_width(dim: int, hidden: int) -> int:
    """Floats of a flattened MLP head (``W1`` is ``hidden × dim``, then ``b1`` and ``w2``)."""
    return hidden * dim + 2 * hidden


def score_rows(
    user_rows: NDArray[np.floating],
    item_rows: NDArray[np.floating],
    dense_rows: NDArray[np.floating] | None = None,
) -> F64:
    """Click probabilities from the rows a replica holds, the same maths as :class:`LogisticMF`.

    ``user_rows`` and ``item_rows`` are ``[n, dim + 1]`` (embedding, bias); ``dense_rows`` is the
    ``dense`` table (row 0: global bias in column 0; row 1, when present: the flattened MLP head,
    its hidden width inferred from its length). Missing rows are zeros, as a cold key scores.
    """
    u = np.asarray(user_rows, dtype=np.float64)
    v = np.asarray(item_rows, dtype=np.float64)
    if u.shape != v.shape or u.ndim != 2 or u.shape[1] < 2:
        raise ValueError(f"user rows {u.shape} and item rows {v.shape} must be [n, dim + 1] alike")
    dim = u.shape[1] - 1
    bias = 0.0
    z: F64
    if dense_rows is not None and np.size(dense_rows):
        d = np.atleast_2d(np.asarray(dense_rows, dtype=np.float64))
        bias = float(d[0, 0])
        z = row_logits(u, v, bias)
        if d.shape[0] > 1 and d.shape[1] % (dim + 2) == 0 and np.any(d[1]):
            hidden = d.shape[1] // (dim + 2)
            w = d[1]
            w1 = w[: hidden * dim].reshape(hidden, dim)
            b1 = w[hidden * dim : hidden * dim + hidden]
            w2 = w[hidden * dim + hidden : head_width(dim, hidden)]
            x = u[:, :-1] * v[:, :-1]
            z = z + np.maximum(x @ w1.T + b1, 0.0) @ w2
    else:
        z = row_logits(u, v, bias)
    return sigmoid(z)
