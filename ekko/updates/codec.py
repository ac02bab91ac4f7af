"""The wire format of pulls: a small header, JSON metadata, then raw numpy buffers.

Rows dominate the bytes, so they travel as columns that compress well. Response frame version 1:
keys sorted and delta-coded (8 bytes), seqs as 32-bit offsets from the section's smallest,
publish times as float32 offsets, a class byte, one small index per row into the section's
``(epoch, origin)`` list (omitted when there is one), and values as float32, float16 or int8 with
a per-row float32 scale (symmetric: the error of each element is at most ``scale / 2``). Version
2 (the default; see :func:`_encode_v2`) puts the metadata inside the compressed body and narrows
every column: key deltas and seq offsets in the narrowest of 1/2/4/8 bytes, publish times as a
step table or whole milliseconds, classes only when they differ, int8 scales as float16. Version
3 (the default) adds int8 *residual* rows — the difference from the value the peer holds from
this responder, on a power-of-two step no coarser than the row's int8 step (see
:func:`residual_int8` and :func:`held_values`; the receiver resolves them with
:meth:`~ekko.updates.store.Store.resolve`) — names the responder and the response number in
int8 frames, and compresses with a shared dictionary (:data:`META_DICT`). Version 4 (the
default) carries the same fields as **binary** metadata (varints, one code byte per section,
table names and ``(epoch, origin)`` pairs once per frame; see :func:`_pack_meta`) behind an
11-byte header, and drops zstd's own magic number and content size (the header has both). The
decoder reads every version (``Encoding(version=1)``, ``2`` or ``3`` writes an older one). The
body may be zstd-compressed as a whole.

Frame layout (little-endian)::

    magic "EKUP" | version u8 | flags u8 (bit 0: zstd) | kind u16 (1 response, 2 request)
    | meta_len u32 | body_len u32 (uncompressed) | crc32 u32 (of meta and payload as sent)
    | meta (UTF-8 JSON) | payload (body, or zstd of body)

    version 4: magic "EKUP" | version u8 (4) | flags u8 (bit 0: zstd) | kind u8 | crc32 u32
    | body_len varint | payload (body, or magicless zstd of body); the body is binary metadata
    then the columns of version 3.

    version 2 and 3 responses: meta_len is 0 and the body starts with ``len u32 | meta``;
    version 3 int8 sections with residual rows: ``mask (packed bits) | full rows' scales and
    values | residual rows' exponents (int8) and values (int8)``.

Anything malformed — truncated, corrupted, fuzzed, a decompression bomb — raises one
:class:`CodecError`; no IndexError, ValueError or zstd error escapes :func:`decode_response` or
:func:`decode_request`. Pure: no I/O.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Sequence
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
FORMAT_VERSION: Final = 4
"""What :func:`encode_response` writes by default; :data:`SUPPORTED_VERSIONS` are decoded."""
SUPPORTED_VERSIONS: Final = (1, 2, 3, 4)
KIND_RESPONSE: Final = 1
KIND_REQUEST: Final = 2
FLAG_ZSTD: Final = 1
FLAG_DICT: Final = 2
FLAG_META_ZSTD: Final = 4
"""Version 3 frames whose body is not compressed: the metadata alone is (zstd with
:data:`META_DICT`). A response that fits a congested link's few kilobytes would otherwise spend
a third of them on JSON."""
"""zstd with :data:`META_DICT` (version 3 frames): a frame is compressed alone, so without a
shared dictionary the JSON field names of its metadata cost about a hundred bytes per frame."""
META_DICT: Final = (
    b'{"tables":[["'
    b'","embedding",1,"",1.0,[]],["'
    b'","dense",1,"",1.0,['
    b'{"t":"","p":0,"n":,"d":,"v":"int8","c":[[0,1,'
    b']],"s":[[0,1]],"k0":,"kw":1,"q0":,"qw":2,"t0":,"tw":1,"ts":[[0,],"cl":1,"r":,"sw":2},{"t":"'
    b'],"src":,"rn":'
)
"""Version 3's raw-content zstd dictionary (frozen with the version: changing it is a new
frame version)."""
_DICT = zstandard.ZstdCompressionDict(META_DICT, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_HEADER = struct.Struct("<4sBBHIII")
_HEADER4 = struct.Struct("<4sBBBI")
"""Version 4's header: magic, version, flags, kind u8, crc32 — then the body length as a
varint (the metadata length is gone: the binary metadata leads the body and ends itself)."""
_ZSTD4 = zstandard.ZstdCompressionParameters
_MAGICLESS = zstandard.FORMAT_ZSTD1_MAGICLESS


def _decompressed(d: zstandard.ZstdDecompressor, payload: bytes, body_len: int) -> bytes:
    """A frame body decompressed to exactly the ``body_len`` bytes its header declares."""
    try:
        body = d.decompress(payload, max_output_size=body_len)
    except zstandard.ZstdError as e:
        raise CodecError(f"bad zstd payload: {e}") from e
    if len(body) != body_len:
        raise CodecError(f"body is {len(body)} bytes, header says {body_len}")
    return body


_META_LEN = struct.Struct("<I")
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
    version: int = FORMAT_VERSION
    """Response frame version to write (1 for peers that predate version 2)."""


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


def _frame(
    kind: int, meta: dict[str, Any], body: bytes, zstd: bool, level: int, *, version: int = 1
) -> bytes:
    if version >= 4:
        return _frame4(kind, meta, body, zstd, level)
    meta_b = json.dumps(meta, separators=(",", ":")).encode()
    meta_z = version >= 3 and not zstd
    if meta_z:
        meta_b = zstandard.ZstdCompressor(level=level, dict_data=_DICT).compress(meta_b)
    if version >= 2:  # the metadata travels inside the (compressed) body
        body = _META_LEN.pack(len(meta_b)) + meta_b + body
        meta_b = b""
    shared = zstd and version >= 3
    if zstd:
        z = zstandard.ZstdCompressor(level=level, dict_data=_DICT if shared else None)
        payload = z.compress(body)
    else:
        payload = body
    crc = zlib.crc32(payload, zlib.crc32(meta_b))
    flags = (FLAG_ZSTD if zstd else 0) | (FLAG_DICT if shared else 0)
    flags |= FLAG_META_ZSTD if meta_z else 0
    head = _HEADER.pack(MAGIC, version, flags, kind, len(meta_b), len(body), crc)
    return head + meta_b + payload


def _unframe(
    data: bytes, kind: int, versions: tuple[int, ...] = (1,)
) -> tuple[dict[str, Any], memoryview, int]:
    if len(data) >= 5 and data[:4] == MAGIC:  # the version decides the header's layout
        if data[4] not in SUPPORTED_VERSIONS:
            raise CodecError(f"frame version {data[4]} is not supported (want one of {versions})")
        if data[4] == 4:
            return (*_unframe4(data, kind, versions), 4)
    if len(data) < HEADER_BYTES:
        raise CodecError(f"frame truncated: {len(data)} bytes, header needs {HEADER_BYTES}")
    magic, version, flags, got_kind, meta_len, body_len, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError("not an update frame (bad magic)")
    if got_kind != kind:
        raise CodecError(f"frame kind {got_kind}, expected {kind}")
    if version not in versions:
        raise CodecError(f"frame version {version} is not supported (want one of {versions})")
    if (
        flags & ~(FLAG_ZSTD | FLAG_DICT | FLAG_META_ZSTD)
        or (flags & (FLAG_DICT | FLAG_META_ZSTD) and version < 3)
        or (flags & FLAG_ZSTD and flags & FLAG_META_ZSTD)
    ):
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
        d = zstandard.ZstdDecompressor(dict_data=_DICT if flags & FLAG_DICT else None)
        body = _decompressed(d, payload, body_len)
    elif len(payload) != body_len:
        raise CodecError(f"body is {len(payload)} bytes, header says {body_len}")
    else:
        body = payload
    if version >= 2:
        if meta_len != 0 or len(body) < _META_LEN.size:
            raise CodecError(f"version {version} frame: metadata must lead the body")
        (inner,) = _META_LEN.unpack_from(body)
        if inner > min(MAX_META_BYTES, len(body) - _META_LEN.size):
            raise CodecError("frame truncated inside its metadata")
        meta_b = body[_META_LEN.size : _META_LEN.size + inner]
        body = body[_META_LEN.size + inner :]
        if flags & FLAG_META_ZSTD:
            try:
                d = zstandard.ZstdDecompressor(dict_data=_DICT)
                meta_b = d.decompress(bytes(meta_b), max_output_size=MAX_META_BYTES)
            except zstandard.ZstdError as e:
                raise CodecError(f"bad zstd metadata: {e}") from e
    try:
        meta = json.loads(meta_b.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodecError(f"bad frame metadata: {e}") from e
    if not isinstance(meta, dict):
        raise CodecError("frame metadata is not an object")
    return meta, memoryview(body), version


# --- version 4: binary metadata -----------------------------------------------------------------
#
# The same fields as version 2/3's JSON metadata, in bytes: unsigned LEB128 varints, zigzag
# varints for signed values, one code byte per section for its small enumerations, the table
# names and the ``(epoch, origin)`` pairs once per frame (sections refer to them by index), and
# publish times as whole microseconds (varint deltas) when every time of a section is one exactly,
# else float64. The decoder turns it back into the JSON shape, so one section parser reads
# versions 2, 3 and 4.

_KINDS: Final = ("embedding", "dense")
_DTYPE_CODES: Final = ("float32", "float16", "int8")
_WIDTH_CODES: Final = (1, 2, 4, 8)
_SEC_CLASS, _SEC_STEPS, _SEC_SW4, _SEC_MICROS = 4, 8, 16, 32
_TOP_TABLES, _TOP_INCOMPLETE, _TOP_SOURCE = 1, 2, 4
_F64 = struct.Struct("<d")
MAX_VARINT_BYTES: Final = 10


class _Out:
    def __init__(self) -> None:
        self.buf = bytearray()

    def uv(self, x: int) -> None:
        if x < 0 or x >= 1 << 64:
            raise ValueError(f"{x} does not fit an unsigned varint")
        while x >= 0x80:
            self.buf.append((x & 0x7F) | 0x80)
            x >>= 7
        self.buf.append(x)

    def zz(self, x: int) -> None:
        self.uv((x << 1) ^ (x >> 63) if -(1 << 63) <= x < 1 << 63 else -1)

    def f64(self, x: float) -> None:
        self.buf += _F64.pack(x)

    def text(self, x: str) -> None:
        b = x.encode()
        self.uv(len(b))
        self.buf += b


class _In:
    """Reads the binary metadata; every read checks what is left (truncation → CodecError)."""

    def __init__(self, body: memoryview) -> None:
        self.body = body
        self.pos = 0

    def uv(self, hi: int = (1 << 64) - 1) -> int:
        x = shift = 0
        for i in range(MAX_VARINT_BYTES):
            if self.pos >= len(self.body):
                raise CodecError("frame truncated inside its metadata")
            byte = self.body[self.pos]
            self.pos += 1
            x |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if i and not byte:
                    raise CodecError("non-minimal varint in frame metadata")
                if x > hi:
                    raise CodecError(f"bad integer {x} in frame metadata")
                return x
            shift += 7
        raise CodecError("varint too long in frame metadata")

    def zz(self) -> int:
        u = self.uv()
        return (u >> 1) ^ -(u & 1)

    def u8(self) -> int:
        return self.uv(255)

    def f64(self) -> float:
        if self.pos + 8 > len(self.body):
            raise CodecError("frame truncated inside its metadata")
        (x,) = _F64.unpack_from(self.body, self.pos)
        self.pos += 8
        return float(x)

    def text(self) -> str:
        n = self.uv(MAX_META_BYTES)
        if self.pos + n > len(self.body):
            raise CodecError("frame truncated inside its metadata")
        raw = bytes(self.body[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise CodecError(f"bad name in frame metadata: {e}") from e

    def index(self, items: Sequence[T]) -> T:
        i = self.uv()
        if i >= len(items):
            raise CodecError("index out of range in frame metadata")
        return items[i]


def _micros(times: list[float]) -> list[int] | None:
    """The times as whole microseconds when each is exactly ``µs / 1e6`` (else None)."""
    out = []
    for t in times:
        if not -1e12 < t < 1e12:  # µs and their deltas fit int64; refuses NaN and infinities
            return None
        us = round(t * 1e6)
        if us / 1e6 != t:
            return None
        out.append(us)
    return out


def _pack_meta(meta: dict[str, Any]) -> bytes:
    """Version 4's metadata: the dict :func:`_encode_v2` builds, in bytes."""
    o = _Out()
    tables, sections = meta["tables"], meta["sections"]
    top = _TOP_TABLES if tables else 0
    top |= _TOP_INCOMPLETE if not meta.get("complete", True) else 0
    top |= _TOP_SOURCE if "src" in meta else 0
    o.uv(top)
    if tables:
        o.uv(len(tables))
        for name, dim, kind, shards, model, weight, shape in tables:
            o.text(name)
            o.uv(dim)
            o.uv(_KINDS.index(kind))
            o.uv(shards)
            o.text(model)
            o.f64(weight)
            o.uv(len(shape))
            for x in shape:
                o.uv(x)
    o.uv(meta.get("backlog", 0))
    if "src" in meta:
        o.uv(meta["src"])
        o.uv(meta["rn"])
    names = list(dict.fromkeys(sec["t"] for sec in sections))
    pairs = list(
        dict.fromkeys(
            [(e, g) for sec in sections for e, g in sec.get("s", [])]
            + [(e, g) for sec in sections for e, g, _ in sec["c"]]
        )
    )
    o.uv(len(names))
    for name in names:
        o.text(name)
    o.uv(len(pairs))
    for e, g in pairs:
        o.zz(e)
        o.zz(g)
    pair_index = {p: i for i, p in enumerate(pairs)}
    o.uv(len(sections))
    for sec in sections:
        o.uv(names.index(sec["t"]))
        o.uv(sec["p"])
        o.uv(sec["n"])
        o.uv(sec["d"])
        times = [t for _, t in sec["ts"]] if "ts" in sec else [sec["t0"]] if "t0" in sec else []
        us = _micros(times)
        code = _DTYPE_CODES.index(sec["v"])
        code |= _SEC_CLASS if "cl" in sec else 0
        code |= _SEC_STEPS if "ts" in sec else 0
        code |= _SEC_SW4 if sec.get("sw") == 4 else 0
        code |= _SEC_MICROS if us is not None else 0
        o.uv(code)
        o.uv(len(sec["c"]))
        for e, g, q in sec["c"]:
            o.uv(pair_index[(e, g)])
            o.zz(q)
        if sec["n"] == 0:
            continue
        o.uv(len(sec["s"]))
        for e, g in sec["s"]:
            o.uv(pair_index[(e, g)])
        o.zz(sec["k0"])
        o.zz(sec["q0"])
        tw = _WIDTH_CODES.index(sec["tw"]) if "tw" in sec else 0
        o.uv(_WIDTH_CODES.index(sec["kw"]) | _WIDTH_CODES.index(sec["qw"]) << 2 | tw << 4)
        if "ts" in sec:
            o.uv(len(sec["ts"]))
            last = 0
            for q, _ in sec["ts"]:
                o.uv(q - last)
                last = q
        if us is not None:
            last = 0
            for x in us:
                o.zz(x - last)
                last = x
        else:
            for t in times:
                o.f64(t)
        if "cl" in sec:
            o.uv(sec["cl"])
        if sec["v"] == "int8":
            o.uv(sec.get("r", 0))
    return bytes(o.buf)


def _unpack_meta(r: _In) -> dict[str, Any]:
    """Version 4's metadata back into the JSON shape the section parser reads."""
    top = r.uv(7)
    meta: dict[str, Any] = {"tables": []}
    if top & _TOP_TABLES:
        for _ in range(r.uv(1 << 20)):
            name, dim, kind, shards, model = (
                r.text(),
                r.uv(),
                r.index(_KINDS),
                r.uv(),
                r.text(),
            )
            weight = r.f64()
            shape = [r.uv() for _ in range(r.uv(64))]
            meta["tables"].append([name, dim, kind, shards, model, weight, shape])
    meta["complete"] = not top & _TOP_INCOMPLETE
    meta["backlog"] = r.uv(1 << 62)
    if top & _TOP_SOURCE:
        meta["src"], meta["rn"] = r.uv(1 << 62), r.uv(1 << 62)
    names = [r.text() for _ in range(r.uv(1 << 20))]
    pairs = [(r.zz(), r.zz()) for _ in range(r.uv(1 << 20))]
    sections: list[dict[str, Any]] = []
    for _ in range(r.uv(1 << 20)):
        sec: dict[str, Any] = {"t": r.index(names), "p": r.uv(), "n": r.uv(), "d": r.uv()}
        code = r.uv(63)
        if code & 3 >= len(_DTYPE_CODES):
            raise CodecError(f"unknown value dtype code {code & 3}")
        sec["v"] = _DTYPE_CODES[code & 3]
        sec["c"] = [[*r.index(pairs), r.zz()] for _ in range(r.uv(1 << 20))]
        sections.append(sec)
        if sec["n"] == 0:
            continue
        sec["s"] = [list(r.index(pairs)) for _ in range(r.uv(1 << 20))]
        sec["k0"], sec["q0"] = r.zz(), r.zz()
        widths = r.uv(63)
        sec["kw"], sec["qw"] = _WIDTH_CODES[widths & 3], _WIDTH_CODES[widths >> 2 & 3]
        steps = []
        if code & _SEC_STEPS:
            q = 0
            for _ in range(r.uv(1 << 20)):
                q += r.uv()
                steps.append(q)
        count = len(steps) if code & _SEC_STEPS else 1
        if code & _SEC_MICROS:
            times, us = [], 0
            for _ in range(count):
                us += r.zz()
                times.append(us / 1e6)
        else:
            times = [r.f64() for _ in range(count)]
        if code & _SEC_STEPS:
            sec["ts"] = [[q, t] for q, t in zip(steps, times, strict=True)]
        else:
            sec["t0"], sec["tw"] = times[0], _WIDTH_CODES[widths >> 4 & 3]
        if code & _SEC_CLASS:
            sec["cl"] = r.u8()
        if sec["v"] == "int8":
            sec["sw"] = 4 if code & _SEC_SW4 else 2
            if r_count := r.uv():
                sec["r"] = r_count
    meta["sections"] = sections
    return meta


def _frame4(kind: int, meta: dict[str, Any], body: bytes, zstd: bool, level: int) -> bytes:
    """Version 4: ``magic | version | flags | kind u8 | crc32 | varint body length | payload``,
    the body being the binary metadata then the columns; zstd without its own magic number or
    content size (the header has both)."""
    body = _pack_meta(meta) + body
    if zstd:
        params = _ZSTD4.from_level(level, format=_MAGICLESS, write_content_size=0, write_dict_id=0)
        payload = zstandard.ZstdCompressor(compression_params=params).compress(body)
    else:
        payload = body
    out = _Out()
    out.uv(len(body))
    crc = zlib.crc32(payload, zlib.crc32(bytes(out.buf)))
    head = _HEADER4.pack(MAGIC, 4, FLAG_ZSTD if zstd else 0, kind, crc)
    return head + bytes(out.buf) + payload


def _unframe4(
    data: bytes, kind: int, versions: tuple[int, ...]
) -> tuple[dict[str, Any], memoryview]:
    if len(data) < _HEADER4.size:
        raise CodecError(f"frame truncated: {len(data)} bytes, header needs {_HEADER4.size}")
    _, _, flags, got_kind, crc = _HEADER4.unpack_from(data)
    if got_kind != kind:
        raise CodecError(f"frame kind {got_kind}, expected {kind}")
    if 4 not in versions:
        raise CodecError(f"frame version 4 is not supported (want one of {versions})")
    if flags & ~FLAG_ZSTD:
        raise CodecError(f"unknown frame flags {flags:#x}")
    head = _In(memoryview(data)[_HEADER4.size :])
    body_len = head.uv(MAX_FRAME_BYTES)
    start = _HEADER4.size + head.pos
    payload = data[start:]
    if zlib.crc32(payload, zlib.crc32(data[_HEADER4.size : start])) != crc:
        raise CodecError("frame checksum mismatch (truncated or corrupt)")
    if flags & FLAG_ZSTD:
        body = _decompressed(zstandard.ZstdDecompressor(format=_MAGICLESS), payload, body_len)
    elif len(payload) != body_len:
        raise CodecError(f"body is {len(payload)} bytes, header says {body_len}")
    else:
        body = payload
    r = _In(memoryview(body))
    meta = _unpack_meta(r)
    return meta, memoryview(body)[r.pos :]


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
    """One frame holding every batch of ``response``, values in ``encoding.dtype``, in frame
    version ``encoding.version``."""
    if encoding.dtype not in VALUE_DTYPES:
        raise ValueError(f"unknown value dtype {encoding.dtype!r}")
    tables = [
        [t.name, t.dim, t.kind, t.shards, t.model, t.weight, list(t.shape)] for t in response.tables
    ]
    if encoding.version == 1:
        return _encode_v1(response, encoding, tables)
    if encoding.version not in (2, 3, 4):
        raise ValueError(f"unknown frame version {encoding.version}")
    return _encode_v2(response, encoding, tables)


def _encode_v1(response: PullResponse, encoding: Encoding, tables: list[list[Any]]) -> bytes:
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


STEPS_DIV = 8
_WIDTHS: Final = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}


def _narrow(values: npt.NDArray[np.integer[Any]]) -> tuple[int, bytes]:
    """Non-negative integers in the narrowest of 1, 2, 4 or 8 bytes: ``(width, bytes)``."""
    top = int(values.max()) if len(values) else 0
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    return width, values.astype(_WIDTHS[width]).tobytes()


def quantize_int8_fp16(values: npt.ArrayLike) -> tuple[I8, npt.NDArray[np.float16]]:
    """Per-row int8 with the scale sent as float16, rounded *up* so no element clips: the error
    of each element is at most half the transmitted step (``scale / 2``). Rows whose scale does
    not fit float16 get ``inf`` (the caller falls back to float32 scales)."""
    x = np.asarray(values, dtype=np.float32)
    if x.size == 0:
        return np.zeros(x.shape, dtype=np.int8), np.zeros(len(x), dtype=np.float16)
    x2 = x.reshape(len(x), -1).astype(np.float64)
    exact = np.abs(x2).max(axis=1, initial=0.0) / 127.0
    with np.errstate(over="ignore"):
        s16 = exact.astype(np.float16)
    low = s16.astype(np.float64) < exact
    s16[low] = np.nextafter(s16[low], np.float16(np.inf))
    safe = np.where(s16 > 0, s16.astype(np.float64), 1.0)
    with np.errstate(invalid="ignore"):
        q = np.clip(np.rint(x2 / safe[:, None]), -127, 127)
    q = np.nan_to_num(q).astype(np.int8)
    return q.reshape(x.shape), s16


def _encode_v2(response: PullResponse, encoding: Encoding, tables: list[list[Any]]) -> bytes:
    """Version 2: metadata inside the (compressed) body, and narrower columns: keys as the first
    key plus deltas, seqs as offsets, each in the narrowest of 1/2/4/8 bytes; publish times as a
    step table (seq where the time changes, exact time) when they only grow with seq and change
    at most every 8 rows (a trainer publishes in batches), else whole milliseconds after the
    first in the narrowest width; classes omitted when one class; int8 scales as float16
    (rounded up)."""
    sections: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for b in response.batches:
        order = np.argsort(b.keys, kind="stable")
        keys = b.keys[order]
        sec: dict[str, Any] = {
            "t": b.table,
            "p": b.part,
            "n": b.n,
            "d": int(b.values.shape[1]),
            "v": encoding.dtype,
            "c": [list(x) for x in b.covered.entries],
        }
        sections.append(sec)
        if b.n == 0:
            continue
        pairs = sorted({(int(e), int(o)) for e, o in zip(b.epochs, b.origins, strict=True)})
        sec["s"] = [list(p) for p in pairs]
        sec["k0"] = int(keys[0])
        # Sorted, so the deltas are non-negative; as uint64 they also survive any int64 span.
        deltas: npt.NDArray[np.uint64] = np.diff(keys.view(np.uint64)).astype(np.uint64)
        sec["kw"], raw = _narrow(deltas)
        chunks.append(raw)
        seqs = b.seqs[order]
        sec["q0"] = seq_base = int(seqs.min())
        sec["qw"], raw = _narrow(seqs - seq_base)
        chunks.append(raw)
        times = b.publish_times[order]
        by_seq = np.lexsort((times, seqs))
        ts, qs = times[by_seq], seqs[by_seq]
        steps = np.ones(len(ts), dtype=np.bool_)
        steps[1:] = ts[1:] != ts[:-1]
        same_seq_same_time = not bool(np.any((qs[1:] == qs[:-1]) & steps[1:]))
        monotone = same_seq_same_time and bool(np.all(np.diff(ts) >= 0))
        if len(pairs) == 1 and monotone and int(steps.sum()) <= max(1, b.n // STEPS_DIV):
            sec["ts"] = [
                [int(q) - seq_base, float(t)] for q, t in zip(qs[steps], ts[steps], strict=True)
            ]
        else:  # whole milliseconds after the first (lag is measured in tens of ms)
            sec["t0"] = t_base = float(times.min())
            ms = np.rint((times - t_base) * 1000.0).astype(np.int64)
            sec["tw"], raw = _narrow(ms)
            chunks.append(raw)
        classes = b.classes[order].astype(np.uint8)
        if bool(np.all(classes == classes[0])):
            sec["cl"] = int(classes[0])
        else:
            chunks.append(classes.tobytes())
        if len(pairs) > 1:
            src_index = {p: i for i, p in enumerate(pairs)}
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
            res = np.zeros(b.n, dtype=np.bool_)
            r_q = np.zeros((0, values.shape[1]), dtype=np.int8)
            r_e = np.zeros(0, dtype=np.int8)
            if encoding.version >= 3 and b.base_values is not None and b.base_mask is not None:
                res, r_q, r_e = residual_int8(values, b.base_values[order], b.base_mask[order])
            if res.any():
                sec["r"] = int(res.sum())
                chunks.append(np.packbits(res).tobytes())
            q, scales, sw = _int8_rows(values[~res])
            sec["sw"] = sw
            chunks.append(scales.astype("<f2" if sw == 2 else "<f4").tobytes())
            chunks.append(q.tobytes())
            if res.any():
                chunks.append(r_e.tobytes())
                chunks.append(r_q.tobytes())
    meta: dict[str, Any] = {"tables": tables, "sections": sections}
    if not response.complete or response.backlog:
        meta["complete"] = response.complete
        meta["backlog"] = response.backlog
    if encoding.version >= 3 and encoding.dtype == "int8" and response.source:
        # Every int8 frame names its responder: the receiver tags the rows it applies with it,
        # and a later residual applies only to a row this responder delivered.
        meta["src"] = response.source
        meta["rn"] = response.number
    return _frame(
        KIND_RESPONSE,
        meta,
        b"".join(chunks),
        encoding.zstd,
        encoding.level,
        version=encoding.version,
    )


def _int8_rows(values: F32) -> tuple[I8, F32, int]:
    """Full int8 rows as a section sends them: float16 scales (``sw`` 2) unless one does not
    fit, then float32 scales for the whole section (``sw`` 4)."""
    q, s16 = quantize_int8_fp16(values)
    if bool(np.all(np.isfinite(s16))):
        return q, s16.astype(np.float32), 2
    q, scales = quantize_int8(values)
    return q, scales, 4


RESIDUAL_EXP_RANGE: Final = (-120, 120)


def residual_int8(
    values: F32, bases: F32, mask: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.bool_], I8, I8]:
    """Frame version 3: rows of ``mask`` sent as int8 residuals against ``bases`` (the value the
    peer holds). The step of a row is its full int8 step (:func:`quantize_int8_fp16`) rounded
    *down* to a power of two, so a residual row is never less exact than the full row would be
    (error at most half a step) and travels with one exponent byte instead of a scale; a small
    change gives small integers, which compress. Rows whose residual needs more than ±127
    steps (or that are all zero, or not finite) go as full rows. Returns ``(residual rows,
    their int8 residuals, their exponents)``."""
    x = np.asarray(values, dtype=np.float32)
    ok = np.asarray(mask, dtype=np.bool_).copy()
    dim = x.shape[1] if x.ndim == 2 else 1
    if not ok.any():
        return ok, np.zeros((0, dim), dtype=np.int8), np.zeros(0, dtype=np.int8)
    _, s16 = quantize_int8_fp16(x)
    step = s16.astype(np.float64)
    lo, hi = RESIDUAL_EXP_RANGE
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        exps = np.floor(np.log2(np.where(step > 0, step, 1.0)))
        ok &= np.isfinite(step) & (step > 0) & (exps >= lo) & (exps <= hi)
        exps = np.clip(np.nan_to_num(exps), lo, hi)
        diff = x.astype(np.float64) - np.asarray(bases, dtype=np.float32).astype(np.float64)
        r = np.rint(diff / np.exp2(exps)[:, None])
        ok &= np.all(np.isfinite(r), axis=1) & (
            np.abs(np.nan_to_num(r)).max(axis=1, initial=0) <= 127
        )
    r_q = np.nan_to_num(r[ok]).astype(np.int8).reshape(int(ok.sum()), dim)
    return ok, r_q, exps[ok].astype(np.int8)


def residual_values(r_q: I8, exps: I8) -> F32:
    """What residual rows decode to: ``r × 2**e`` (exact in float32)."""
    step = np.exp2(np.asarray(exps, dtype=np.float32)).astype(np.float32)
    out: F32 = (np.asarray(r_q, dtype=np.int8).astype(np.float32) * step[:, None]).astype(
        np.float32
    )
    return out


def held_values(
    values: npt.ArrayLike,
    dtype: ValueDType,
    *,
    version: int = FORMAT_VERSION,
    bases: npt.ArrayLike | None = None,
    mask: npt.ArrayLike | None = None,
) -> F32:
    """Exactly what a peer holds after it applies these rows sent as one section in ``dtype``
    (frame ``version``), residual rows (frame version 3, int8, where ``mask`` is set) added to
    ``bases``: the responder remembers it, so its next residual is against the peer's true
    value and quantisation errors do not accumulate."""
    x = np.asarray(values, dtype=np.float32)
    if dtype == "float32":
        return x.copy()
    if dtype == "float16":
        out16: F32 = np.clip(x, -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32)
        return out16
    if version < 2:
        q, scales = quantize_int8(x)
        return dequantize_int8(q, scales)
    out = np.zeros_like(x)
    res = np.zeros(len(x), dtype=np.bool_)
    if version >= 3 and bases is not None and mask is not None:
        base = np.asarray(bases, dtype=np.float32)
        res, r_q, r_e = residual_int8(x, base, np.asarray(mask, dtype=np.bool_))
        out[res] = (base[res] + residual_values(r_q, r_e)).astype(np.float32)
    q, scales, _ = _int8_rows(x[~res])
    out[~res] = dequantize_int8(q, scales)
    return out


def decode_response(data: bytes) -> PullResponse:
    """The response in ``data``; raises :class:`CodecError` on anything malformed."""
    return _guard(lambda: _decode_response(data))


def _decode_response(data: bytes) -> PullResponse:
    meta, body, version = _unframe(data, KIND_RESPONSE, SUPPORTED_VERSIONS)
    tables = _tables(meta["tables"])
    r = _Reader(body)
    if version >= 2:
        batches = [_section_v2(s, r) for s in meta["sections"]]
        r.done()
        complete, backlog = meta.get("complete", True), meta.get("backlog", 0)
        source = _int(meta.get("src", 0), 0, 1 << 62)
        if source == 0 and any(b.residual is not None for b in batches):
            raise CodecError("residual rows without a source")
        number = _int(meta.get("rn", 0))
        return PullResponse(
            tuple(tables), tuple(batches), bool(complete), _int(backlog), source, number
        )
    batches = [_section_v1(s, r) for s in meta["sections"]]
    r.done()
    return PullResponse(
        tuple(tables), tuple(batches), bool(meta["complete"]), _int(meta["backlog"])
    )


def _width(x: object) -> type[np.generic]:
    if x not in _WIDTHS:
        raise CodecError(f"bad column width {x!r}")
    return np.dtype(_WIDTHS[x]).type


def _section_v2(s: dict[str, Any], r: _Reader) -> Batch:
    n = _int(s["n"], 0, MAX_FRAME_BYTES)
    dim = _int(s["d"], 1, 1 << 24)
    dtype = s["v"]
    if dtype not in VALUE_DTYPES:
        raise CodecError(f"unknown value dtype {dtype!r}")
    if n * dim > MAX_FRAME_BYTES:
        raise CodecError("section too large")
    covered = _vector(s["c"])
    table, part = str(s["t"]), _int(s["p"], 0, 1 << 20)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Batch(
            table,
            part,
            empty,
            empty.copy(),
            empty.copy(),
            empty.copy(),
            np.zeros(0),
            np.zeros((0, dim), dtype=np.float32),
            np.zeros(0, dtype=np.uint8),
            covered,
        )
    pairs = [(_int(e, -(1 << 62)), _int(o, -(1 << 62))) for e, o in s["s"]]
    if not pairs:
        raise CodecError("rows without a source")
    k0 = _int(s["k0"], -(1 << 63), (1 << 63) - 1)
    deltas = r.take(_width(s["kw"]), n - 1).astype(np.uint64)
    steps = np.concatenate(([np.uint64(k0 & ((1 << 64) - 1))], deltas))
    keys = np.cumsum(steps, dtype=np.uint64).view(np.int64)
    seq_base = _int(s["q0"], -(1 << 62))
    seqs = r.take(_width(s["qw"]), n).astype(np.int64) + seq_base
    if "ts" in s:
        table_ = s["ts"]
        if not isinstance(table_, list) or not table_:
            raise CodecError("bad publish-time steps")
        at = np.asarray([_int(q, 0) for q, _ in table_], dtype=np.int64) + seq_base
        when = np.asarray([float(t) for _, t in table_], dtype=np.float64)
        idx = np.searchsorted(at, seqs, side="right") - 1
        if bool(np.any(idx < 0)):
            raise CodecError("a seq below the first publish-time step")
        times = when[idx]
    else:
        ms = r.take(_width(s["tw"]), n).astype(np.float64)
        times = float(s["t0"]) + ms / 1000.0
    if "cl" in s:
        classes = np.full(n, _int(s["cl"], 0, 255), dtype=np.uint8)
    else:
        classes = r.take(np.uint8, n)
    if len(pairs) > 1:
        idx = r.take(np.dtype("<u2").type, n).astype(np.int64)
        if int(idx.max()) >= len(pairs):
            raise CodecError("source index out of range")
    else:
        idx = np.zeros(n, dtype=np.int64)
    src = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    res = None
    if dtype == "float32":
        values = r.take(np.dtype("<f4").type, n * dim).astype(np.float32)
    elif dtype == "float16":
        values = r.take(np.dtype("<f2").type, n * dim).astype(np.float32)
    else:
        sw = s.get("sw")
        if sw not in (2, 4):
            raise CodecError(f"bad scale width {sw!r}")
        m = _int(s.get("r", 0), 0, n)
        if m:
            bits = r.take(np.uint8, (n + 7) // 8)
            res = np.unpackbits(bits, count=n).astype(np.bool_)
            if int(res.sum()) != m:
                raise CodecError("residual mask does not match its count")
        full = n - m
        scales = r.take(np.dtype("<f2" if sw == 2 else "<f4").type, full).astype(np.float32)
        q = r.take(np.int8, full * dim).reshape(full, dim)
        if res is None:
            values = dequantize_int8(q, scales)
        else:
            exps = r.take(np.int8, m)
            lo, hi = RESIDUAL_EXP_RANGE
            if m and (int(exps.min()) < lo or int(exps.max()) > hi):
                raise CodecError("residual exponent out of range")
            r_q = r.take(np.int8, m * dim).reshape(m, dim)
            values = np.zeros((n, dim), dtype=np.float32)
            values[~res] = dequantize_int8(q, scales)
            values[res] = residual_values(r_q, exps)
    return Batch(
        table,
        part,
        keys,
        src[idx, 0],
        src[idx, 1],
        seqs,
        times,
        values.reshape(n, dim),
        classes,
        covered,
        residual=res,
    )


def _tables(raw: object) -> list[TableSpec]:
    if not isinstance(raw, list):
        raise CodecError("bad table catalogue")
    tables = []
    for t in raw:
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
    return tables


def _section_v1(s: dict[str, Any], r: _Reader) -> Batch:
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
    return Batch(
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
    meta: dict[str, Any] = {
        "budget": request.budget_bytes,
        "dtype": request.dtype,
        "zstd": request.zstd,
        "peer": request.peer,
        "region": request.region,
        "shards": shards,
        "fv": request.frame_version,
        "pid": request.puller,
    }
    if request.catalogue:
        meta["cat"] = request.catalogue
    if request.acks:
        meta["ack"] = [list(a) for a in request.acks]
    if request.superseded:
        meta["sup"] = [[t, list(k)] for t, k in request.superseded]
    if request.forget:
        meta["forget"] = True
    if request.models:
        meta["mdl"] = list(request.models)
    return _frame(KIND_REQUEST, meta, b"".join(chunks), zstd, 3)


def decode_request(data: bytes) -> PullRequest:
    """The request in ``data``; raises :class:`CodecError` on anything malformed."""
    return _guard(lambda: _decode_request(data))


def _decode_request(data: bytes) -> PullRequest:
    meta, body, _ = _unframe(data, KIND_REQUEST)
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
        _int(meta.get("fv", 1), 1, 255),  # pullers that predate version 2 do not say
        _int(meta.get("cat", 0)),
        _acks(meta.get("ack", [])),
        _int(meta.get("pid", 0)),
        _superseded(meta.get("sup", [])),
        bool(meta.get("forget", False)),
        _models(meta.get("mdl", [])),
    )


def _models(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > 1024 or not all(isinstance(m, str) for m in raw):
        raise CodecError("bad model list")
    return tuple(str(m) for m in raw)


def _superseded(raw: object) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(raw, list) or len(raw) > 1024:
        raise CodecError("bad superseded rows")
    out = []
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise CodecError("bad superseded rows")
        keys = entry[1]
        if not isinstance(keys, list) or len(keys) > 1 << 20:
            raise CodecError("bad superseded keys")
        out.append((entry[0], tuple(_int(k, -(1 << 63), (1 << 63) - 1) for k in keys)))
    return tuple(out)


def _acks(raw: object) -> tuple[tuple[int, int], ...]:
    if not isinstance(raw, list) or len(raw) > 1024:
        raise CodecError("bad acknowledgements")
    out = []
    for a in raw:
        if not isinstance(a, list) or len(a) != 2:
            raise CodecError("bad acknowledgement")
        out.append((_int(a[0]), _int(a[1])))
    return tuple(out)
