"""The wire format of pulls: a small header, JSON metadata, then raw numpy buffers.

Rows dominate the bytes, so they travel as columns that compress well: keys sorted and
delta-coded, seqs as 32-bit offsets from the section's smallest, publish times as float32 offsets,
one small index per row into the section's ``(epoch, origin)`` list (omitted when there is one),
and values as float32, float16 or int8 with a per-row float32 scale (symmetric: the error of each
element is at most ``scale / 2``). The body may be zstd-compressed as a whole.

Frame layout (little-endian)::

    magic "EKUP" | version u8 | flags u8 (bit 0: zstd) | kind u16 (1 response, 2 request)
    | meta_len u32 | body_len u32 (uncompressed) | crc32 u32 (of meta and payload as sent)
    | meta (UTF-8 JSON) | payload (body, or zstd of body)

Anything malformed — truncated, corrupted, fuzzed, a decompression bomb — raises one
:class:`CodecError`; no IndexError, ValueError or zstd error escapes :func:`decode_response` or
:func:`decode_request`. Pure: no I/O.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
import zstandard

from ekko.updates.store import (
    VALUE_DTYPES,
    Batch,
    PullRequest,
    PullResponse,
    ShardId,
    TableSpec,
    ValueDType,
    row_wire_bytes,
)
from ekko.updates.versions import Knowledge, VersionVector

F32 = npt.NDArray[np.float32]
I8 = npt.NDArray[np.int8]

MAGIC: Final = b"EKUP"
FORMAT_VERSION: Final = 1
KIND_RESPONSE: Final = 1
KIND_REQUEST: Final = 2
FLAG_ZSTD: Final = 1
_HEADER = struct.Struct("<4sBBHIII")
HEADER_BYTES: Final = _HEADER.size
MAX_FRAME_BYTES: Final = 1 << 30
"""Frames (decompressed) above 1 GiB are refused: a corrupt length must not allocate memory."""
MAX_META_BYTES: Final = 64 << 20
FP16_MAX: Final = 65504.0

T = TypeVar("T")


class CodecError(Exception):
    """A frame could not be decoded (truncated, corrupt or not a frame of this version)."""


@dataclass(frozen=True)
class Encoding:
    """How values travel: ``dtype`` and whether the body is zstd-compressed (at ``level``)."""

    dtype: ValueDType = "float32"
    zstd: bool = False
    level: int = 3


def quantize_int8(values: npt.ArrayLike) -> tuple[I8, F32]:
    """Symmetric per-row int8: ``q = round(x / scale)`` with ``scale = max|x| / 127``."""
    x = np.asarray(values, dtype=np.float32)
    if x.size == 0:  # no rows (a batch that only vouches for a vector): reshape(0, -1) fails
        return np.zeros(x.shape, dtype=np.int8), np.zeros(len(x), dtype=np.float32)
    x2 = x.reshape(len(x), -1).astype(np.float64)
    scales = (np.abs(x2).max(axis=1, initial=0.0) / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float64)
    q = np.clip(np.rint(x2 / safe[:, None]), -127, 127).astype(np.int8)
    return q.reshape(x.shape), scales


def dequantize_int8(q: npt.ArrayLike, scales: npt.ArrayLike) -> F32:
    qa = np.asarray(q, dtype=np.int8)
    s = np.asarray(scales, dtype=np.float32)
    with np.errstate(over="ignore"):  # a scale near float32's max may round up to inf
        out: F32 = (qa.astype(np.float32) * s.reshape(-1, *([1] * (qa.ndim - 1)))).astype(
            np.float32
        )
    return out


def fp32_bytes(response: PullResponse) -> int:
    """What the response's rows would cost as uncompressed float32 (the "raw" bytes metric; the
    wire bytes over this is the compression ratio)."""
    return sum(b.n * row_wire_bytes(int(b.values.shape[1]), "float32") for b in response.batches)


# --- frames -------------------------------------------------------------------------------------


def _frame(kind: int, meta: dict[str, Any], body: bytes, zstd: bool, level: int) -> bytes:
    meta_b = json.dumps(meta, separators=(",", ":")).encode()
    payload = zstandard.ZstdCompressor(level=level).compress(body) if zstd else body
    crc = zlib.crc32(payload, zlib.crc32(meta_b))
    flags = FLAG_ZSTD if zstd else 0
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, kind, len(meta_b), len(body), crc)
    return head + meta_b + payload


def _unframe(data: bytes, kind: int) -> tuple[dict[str, Any], memoryview]:
    if len(data) < HEADER_BYTES:
        raise CodecError(f"frame truncated: {len(data)} bytes, header needs {HEADER_BYTES}")
    magic, version, flags, got_kind, meta_len, body_len, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError("not an update frame (bad magic)")
    if version != FORMAT_VERSION:
        raise CodecError(f"frame version {version} is not supported (want {FORMAT_VERSION})")
    if got_kind != kind:
        raise CodecError(f"frame kind {got_kind}, expected {kind}")
    if flags & ~FLAG_ZSTD:
        raise CodecError(f"unknown frame flags {flags:#x}")
    if meta_len > MAX_META_BYTES or body_len > MAX_FRAME_BYTES:
        raise CodecError("frame lengths out of range")
    if len(data) < HEADER_BYTES + meta_len:
        raise CodecError("frame truncated inside its metadata")
    meta_b = data[HEADER_BYTES : HEADER_BYTES + meta_len]
    payload = data[HEADER_BYTES + meta_len :]
    if zlib.crc32(payload, zlib.crc32(meta_b)) != crc:
        raise CodecError("frame checksum mismatch (truncated or corrupt)")
    if flags & FLAG_ZSTD:
        try:
            body = zstandard.ZstdDecompressor().decompress(payload, max_output_size=body_len)
        except zstandard.ZstdError as e:
            raise CodecError(f"bad zstd payload: {e}") from e
    else:
        body = payload
    if len(body) != body_len:
        raise CodecError(f"body is {len(body)} bytes, header says {body_len}")
    try:
        meta = json.loads(meta_b.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodecError(f"bad frame metadata: {e}") from e
    if not isinstance(meta, dict):
        raise CodecError("frame metadata is not an object")
    return meta, memoryview(body)


class _Reader:
    """Reads typed arrays off a body, checking every length against what is left."""

    def __init__(self, body: memoryview) -> None:
        self.body = body
        self.pos = 0

    def take(self, dtype: type[np.generic], count: int) -> npt.NDArray[Any]:
        if count < 0:
            raise CodecError("negative array length")
        size = np.dtype(dtype).itemsize * count
        if self.pos + size > len(self.body):
            raise CodecError("frame body truncated")
        out = np.frombuffer(self.body, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += size
        return out

    def done(self) -> None:
        if self.pos != len(self.body):
            raise CodecError(f"{len(self.body) - self.pos} unexpected bytes after the last array")


def _guard(fn: Callable[[], T]) -> T:
    """Run a decoder; anything a malformed frame makes it raise becomes a CodecError."""
    try:
        return fn()
    except CodecError:
        raise
    except Exception as e:  # by design: no other error may escape a decoder
        raise CodecError(f"malformed frame: {type(e).__name__}: {e}") from e


def _int(x: object, lo: int = 0, hi: int = 1 << 62) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise CodecError(f"bad integer {x!r} in frame metadata")
    return x


def _vector(raw: object) -> VersionVector:
    if not isinstance(raw, list):
        raise CodecError("bad version vector")
    entries = {}
    for item in raw:
        if not isinstance(item, list) or len(item) != 3:
            raise CodecError("bad version vector entry")
        e, o, s = (_int(v, -(1 << 62)) for v in item)
        entries[(e, o)] = s
    return VersionVector.of(entries)


# --- responses ----------------------------------------------------------------------------------


def encode_response(response: PullResponse, encoding: Encoding = Encoding()) -> bytes:
    """One frame holding every batch of ``response``, values in ``encoding.dtype``."""
    if encoding.dtype not in VALUE_DTYPES:
        raise ValueError(f"unknown value dtype {encoding.dtype!r}")
    tables = [
        [t.name, t.dim, t.kind, t.shards, t.model, t.weight, list(t.shape)] for t in response.tables
    ]
    sections: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for b in response.batches:
        order = np.argsort(b.keys, kind="stable")
        keys = b.keys[order]
        deltas = keys.copy()
        deltas[1:] = np.diff(keys)
        seqs = b.seqs[order]
        seq_base = int(seqs.min()) if b.n else 0
        wide = bool(b.n) and int(seqs.max()) - seq_base >= 1 << 32
        times = b.publish_times[order]
        t_base = float(times.min()) if b.n else 0.0
        pairs = sorted({(int(e), int(o)) for e, o in zip(b.epochs, b.origins, strict=True)})
        src_index = {p: i for i, p in enumerate(pairs)}
        sections.append(
            {
                "table": b.table,
                "part": b.part,
                "n": b.n,
                "dim": int(b.values.shape[1]),
                "dtype": encoding.dtype,
                "covered": [list(x) for x in b.covered.entries],
                "sources": [list(p) for p in pairs],
                "seq_base": seq_base,
                "seq_wide": wide,
                "t_base": t_base,
            }
        )
        chunks.append(deltas.astype("<i8").tobytes())
        offsets = seqs - seq_base
        chunks.append(offsets.astype("<i8" if wide else "<u4").tobytes())
        chunks.append((times - t_base).astype("<f4").tobytes())
        chunks.append(b.classes[order].astype(np.uint8).tobytes())
        if len(pairs) > 1:
            idx = [
                src_index[(int(e), int(o))]
                for e, o in zip(b.epochs[order], b.origins[order], strict=True)
            ]
            chunks.append(np.asarray(idx, dtype="<u2").tobytes())
        values = b.values[order]
        if encoding.dtype == "float32":
            chunks.append(values.astype("<f4").tobytes())
        elif encoding.dtype == "float16":
            chunks.append(np.clip(values, -FP16_MAX, FP16_MAX).astype("<f2").tobytes())
        else:
            q, scales = quantize_int8(values)
            chunks.append(scales.astype("<f4").tobytes())
            chunks.append(q.tobytes())
    meta = {
        "tables": tables,
        "complete": response.complete,
        "backlog": response.backlog,
        "sections": sections,
    }
    return _frame(KIND_RESPONSE, meta, b"".join(chunks), encoding.zstd, encoding.level)


def decode_response(data: bytes) -> PullResponse:
    """The response in ``data``; raises :class:`CodecError` on anything malformed."""
    return _guard(lambda: _decode_response(data))


def _decode_response(data: bytes) -> PullResponse:
    meta, body = _unframe(data, KIND_RESPONSE)
    tables = []
    for t in meta["tables"]:
        name, dim, kind, shards, model, weight, shape = t
        if kind not in ("embedding", "dense"):
            raise CodecError(f"unknown table kind {kind!r}")
        tables.append(
            TableSpec(
                str(name),
                _int(dim, 1, 1 << 24),
                kind,
                _int(shards, 1, 1 << 20),
                str(model),
                float(weight),
                tuple(_int(x) for x in shape),
            )
        )
    r = _Reader(body)
    batches = []
    for s in meta["sections"]:
        n = _int(s["n"], 0, MAX_FRAME_BYTES)
        dim = _int(s["dim"], 1, 1 << 24)
        dtype = s["dtype"]
        if dtype not in VALUE_DTYPES:
            raise CodecError(f"unknown value dtype {dtype!r}")
        if n * dim > MAX_FRAME_BYTES:
            raise CodecError("section too large")
        pairs = [(_int(e, -(1 << 62)), _int(o, -(1 << 62))) for e, o in s["sources"]]
        if n and not pairs:
            raise CodecError("rows without a source")
        keys = np.cumsum(r.take(np.dtype("<i8").type, n), dtype=np.int64)
        seq_base = _int(s["seq_base"], -(1 << 62))
        raw_seqs = r.take(np.dtype("<i8" if s["seq_wide"] else "<u4").type, n)
        seqs = raw_seqs.astype(np.int64) + seq_base
        times = r.take(np.dtype("<f4").type, n).astype(np.float64) + float(s["t_base"])
        classes = r.take(np.uint8, n)
        if len(pairs) > 1:
            idx = r.take(np.dtype("<u2").type, n).astype(np.int64)
            if n and int(idx.max()) >= len(pairs):
                raise CodecError("source index out of range")
        else:
            idx = np.zeros(n, dtype=np.int64)
        src = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        epochs = src[idx, 0] if n else np.zeros(0, dtype=np.int64)
        origins = src[idx, 1] if n else np.zeros(0, dtype=np.int64)
        if dtype == "float32":
            values = r.take(np.dtype("<f4").type, n * dim).astype(np.float32)
        elif dtype == "float16":
            values = r.take(np.dtype("<f2").type, n * dim).astype(np.float32)
        else:
            scales = r.take(np.dtype("<f4").type, n)
            q = r.take(np.int8, n * dim).reshape(n, dim)
            values = dequantize_int8(q, scales)
        batches.append(
            Batch(
                str(s["table"]),
                _int(s["part"], 0, 1 << 20),
                keys,
                epochs,
                origins,
                seqs,
                times,
                values.reshape(n, dim),
                classes,
                _vector(s["covered"]),
            )
        )
    r.done()
    return PullResponse(
        tuple(tables), tuple(batches), bool(meta["complete"]), _int(meta["backlog"])
    )


# --- requests -----------------------------------------------------------------------------------


def encode_request(request: PullRequest, zstd: bool = False) -> bytes:
    """One frame holding the puller's knowledge per shard (exceptions as int64 columns)."""
    shards = []
    chunks: list[bytes] = []
    for (table, part), k in request.knowledge.items():
        shards.append(
            {
                "table": table,
                "part": part,
                "vector": [list(x) for x in k.vector.entries],
                "n_exc": k.n_exceptions,
            }
        )
        for arr in (k.exc_keys, k.exc_epochs, k.exc_origins, k.exc_seqs):
            chunks.append(arr.astype("<i8").tobytes())
    meta = {
        "budget": request.budget_bytes,
        "dtype": request.dtype,
        "zstd": request.zstd,
        "peer": request.peer,
        "region": request.region,
        "shards": shards,
    }
    return _frame(KIND_REQUEST, meta, b"".join(chunks), zstd, 3)


def decode_request(data: bytes) -> PullRequest:
    """The request in ``data``; raises :class:`CodecError` on anything malformed."""
    return _guard(lambda: _decode_request(data))


def _decode_request(data: bytes) -> PullRequest:
    meta, body = _unframe(data, KIND_REQUEST)
    r = _Reader(body)
    knowledge: dict[ShardId, Knowledge] = {}
    for s in meta["shards"]:
        n = _int(s["n_exc"], 0, MAX_FRAME_BYTES)
        cols = [r.take(np.dtype("<i8").type, n).astype(np.int64) for _ in range(4)]
        if n > 1 and bool(np.any(np.diff(cols[0]) <= 0)):
            raise CodecError("exception keys must be sorted and unique")
        knowledge[(str(s["table"]), _int(s["part"], 0, 1 << 20))] = Knowledge(
            _vector(s["vector"]), *cols
        )
    r.done()
    dtype = meta["dtype"]
    if dtype not in VALUE_DTYPES:
        raise CodecError(f"unknown value dtype {dtype!r}")
    return PullRequest(
        knowledge,
        _int(meta["budget"]),
        dtype,
        bool(meta["zstd"]),
        str(meta["peer"]),
        str(meta["region"]),
    )
