"""The wire codec: exact float32 round trips, the int8 error bound, clean errors on bad frames."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ekko.updates.codec import (
    HEADER_BYTES,
    CodecError,
    Encoding,
    decode_request,
    decode_response,
    dequantize_int8,
    encode_request,
    encode_response,
    fp32_bytes,
    quantize_int8,
)
from ekko.updates.priority import Scheduler
from ekko.updates.store import Batch, PullResponse, Store, TableSpec, row_wire_bytes
from ekko.updates.versions import Knowledge, Version, VersionVector

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


def _response(seed: int, n: int, dim: int, two_sources: bool = False) -> PullResponse:
    rng = np.random.default_rng(seed)
    spec = TableSpec("t", dim, shards=1, model="m", weight=0.5)
    keys = rng.choice(1 << 40, size=n, replace=False) - (1 << 39)
    origins = rng.integers(1, 3, size=n) if two_sources else np.ones(n, dtype=np.int64)
    b = Batch.of(
        "t",
        0,
        keys,
        epochs=0,
        origins=origins,
        seqs=rng.integers(1, 1 << 45, size=n),
        publish_times=1.7e9 + rng.random(n) * 100,
        values=rng.normal(size=(n, dim)) * 10,
        classes=rng.integers(0, 3, size=n),
        covered=VersionVector.of({(0, 1): 99, (1, 2): 7}),
    )
    return PullResponse((spec,), (b,), False, 12)


def _same(a: Batch, b: Batch) -> None:
    order = np.argsort(a.keys)
    assert np.array_equal(a.keys[order], b.keys)
    for name in ("epochs", "origins", "seqs", "classes"):
        assert np.array_equal(getattr(a, name)[order], getattr(b, name)), name
    assert np.allclose(a.publish_times[order], b.publish_times, atol=2e-5)
    assert a.covered == b.covered


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 50), st.integers(1, 33), st.booleans(), st.booleans())
def test_float32_round_trip_is_exact(seed: int, n: int, dim: int, zstd: bool, two: bool) -> None:
    r = _response(seed, n, dim, two)
    out = decode_response(encode_response(r, Encoding("float32", zstd)))
    assert out.tables == r.tables and out.complete is False and out.backlog == 12
    _same(r.batches[0], out.batches[0])
    order = np.argsort(r.batches[0].keys)
    assert np.array_equal(r.batches[0].values[order], out.batches[0].values)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**31),
    st.integers(1, 40),
    st.integers(1, 33),
    st.sampled_from(["int8", "float16"]),
)
def test_lossy_encodings_stay_within_their_bound(seed: int, n: int, dim: int, dtype: str) -> None:
    r = _response(seed, n, dim)
    data = encode_response(r, Encoding(dtype, True))  # type: ignore[arg-type]
    out = decode_response(data).batches[0]
    src = r.batches[0].values[np.argsort(r.batches[0].keys)]
    if dtype == "int8":
        # Frame version 2 sends the scale as float16 rounded up: the step is at most one
        # float16 ulp (2**-10 relative, 2**-24 absolute below the normal range) larger.
        scale = np.abs(src).max(axis=1, keepdims=True) / 127
        assert (np.abs(out.values - src) <= scale / 2 * (1 + 2**-10) + 2**-25 + 1e-6).all()
    else:
        assert np.allclose(out.values, src, rtol=1e-3, atol=1e-3)
    # The encoder never exceeds the scheduler's per-row estimate (before compression).
    plain = encode_response(r, Encoding(dtype, False))  # type: ignore[arg-type]
    assert len(plain) - HEADER_BYTES - 600 <= n * row_wire_bytes(dim, dtype)  # type: ignore[arg-type]


@given(st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=20))
def test_int8_error_is_at_most_half_a_step(rows: list[list[float]]) -> None:
    x = np.array(rows, dtype=np.float32)
    q, scales = quantize_int8(x)
    err = np.abs(dequantize_int8(q, scales) - x)
    assert (err <= scales[:, None] / 2 * (1 + 1e-6) + np.abs(x) * 1e-6 + 1e-30).all()


def test_request_round_trip() -> None:
    k = Knowledge.build({(0, 1): 5, (1, 2): 3}, [(9, Version(0, 1, 8)), (-4, Version(1, 2, 9))])
    s = Store()
    s.declare(TableSpec("t", 4, shards=2))
    req = s.pull_request(12345, "int8", True, "node-a", "eu")
    req = type(req)({("t", 0): k, ("t", 1): Knowledge()}, 12345, "int8", True, "node-a", "eu")
    for z in (False, True):
        assert decode_request(encode_request(req, zstd=z)) == req


def test_compression_ratio_on_typical_rows() -> None:
    s = Store()
    s.declare(TableSpec("t", 16))
    rng = np.random.default_rng(0)
    s.write(
        "t",
        np.arange(2000) * 7,
        rng.normal(size=(2000, 16)) * 0.1,
        epoch=0,
        origin=1,
        seqs=1_700_000_000_000_000 + np.arange(2000),
        publish_time=5.0,
    )
    r = Scheduler().respond(s, Store().pull_request(1 << 30))
    fp32 = fp32_bytes(r)
    small = len(encode_response(r, Encoding("int8", True)))
    assert small < 0.4 * fp32


def _residual_response(seed: int, n: int, dim: int, steps: bool = False) -> PullResponse:
    """An int8 response whose every other row has a base (sent as a residual), from responder
    9; ``steps``: the trainer published in batches (exact step table of publish times)."""
    rng = np.random.default_rng(seed)
    r = _response(seed, n, dim, two_sources=not steps)
    b = r.batches[0]
    base = (b.values + rng.normal(size=b.values.shape) * 0.01).astype(np.float32)
    mask = np.arange(n) % 2 == 0
    times = np.repeat(np.arange(n // 8 + 1) * 0.125 + 3.001, 8)[:n] if steps else b.publish_times
    seqs = np.arange(1, n + 1) if steps else b.seqs
    b = dataclasses.replace(b, base_values=base, base_mask=mask, seqs=seqs, publish_times=times)
    empty = Batch.of(
        "u",
        3,
        [],
        epochs=0,
        origins=1,
        seqs=[],
        publish_times=[],
        values=np.zeros((0, 2)),
        covered=VersionVector.of({(0, 1): 5}),
    )
    return PullResponse(r.tables, (b, empty), True, 0, source=9, number=4)


def _valid_frames() -> list[bytes]:
    r = _response(7, 10, 4, True)
    req = type(Store().pull_request(1))(
        {("t", 0): Knowledge.build({(0, 1): 5}, [(3, Version(0, 1, 9))])}, 100, "int8", True
    )
    return [
        encode_response(r, Encoding("float32", False)),
        encode_response(r, Encoding("int8", True)),
        encode_response(r, Encoding("float16", False)),
        encode_response(_residual_response(3, 12, 5), Encoding("int8", False)),
        encode_response(_residual_response(4, 12, 5), Encoding("int8", True)),
        encode_response(r, Encoding("int8", True, version=3)),
        encode_response(r, Encoding("float32", False, version=3)),
        encode_response(r, Encoding("int8", True, version=1)),
        encode_response(r, Encoding("float32", False, version=1)),
        encode_request(req),
        encode_request(req, zstd=True),
    ]


FRAMES = _valid_frames()


def _decode_any(data: bytes) -> None:
    for decode in (decode_response, decode_request):
        with contextlib.suppress(CodecError):
            decode(data)


def _reframe(frame: bytes, meta: bytes, payload: bytes) -> bytes:
    """Re-seal a frame with a correct checksum (to get fuzz past the CRC into the parser)."""
    magic, version, flags, kind, _, body_len, _ = struct.unpack_from("<4sBBHIII", frame)
    crc = zlib.crc32(payload, zlib.crc32(meta))
    return (
        struct.pack("<4sBBHIII", magic, version, flags, kind, len(meta), body_len, crc)
        + meta
        + payload
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(FRAMES))), st.data())
def test_fuzzed_frames_raise_only_codec_errors(which: int, data: st.DataObject) -> None:
    frame = bytearray(FRAMES[which])
    how = data.draw(
        st.sampled_from(["truncate", "flip", "reseal-meta", "reseal-body", "header", "junk"])
    )
    if how == "truncate":
        frame = frame[: data.draw(st.integers(0, len(frame) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(frame) - 1))
            frame[i] ^= data.draw(st.integers(1, 255))
    elif how == "header":
        i = data.draw(st.integers(0, HEADER_BYTES - 1))
        frame[i] = data.draw(st.integers(0, 255))
    elif how == "junk":
        frame = bytearray(data.draw(st.binary(max_size=200)))
    else:
        meta_len = struct.unpack_from("<I", frame, 8)[0]
        meta = bytearray(frame[HEADER_BYTES : HEADER_BYTES + meta_len])
        payload = bytearray(frame[HEADER_BYTES + meta_len :])
        target = meta if how == "reseal-meta" else payload
        if target:
            for _ in range(data.draw(st.integers(1, 4))):
                i = data.draw(st.integers(0, len(target) - 1))
                target[i] = data.draw(st.sampled_from([0, 1, 0x22, 0x2D, 0x39, 0x5B, 0x7D, 0xFF]))
        frame = bytearray(_reframe(bytes(frame), bytes(meta), bytes(payload)))
    _decode_any(bytes(frame))


def test_bad_frames_name_the_problem() -> None:
    good = FRAMES[0]
    with pytest.raises(CodecError, match="truncated"):
        decode_response(good[:10])
    with pytest.raises(CodecError, match="magic"):
        decode_response(b"XXXX" + good[4:])
    with pytest.raises(CodecError, match="checksum"):
        decode_response(good[:-1])
    with pytest.raises(CodecError, match="kind"):
        decode_request(good)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_a_batch_without_rows_round_trips_in_every_dtype(dtype: str) -> None:
    # A batch that only vouches for a vector (an idle shard): int8 once failed to reshape it.
    b = Batch.of(
        "t",
        0,
        np.zeros(0, dtype=np.int64),
        epochs=0,
        origins=0,
        seqs=0,
        publish_times=0.0,
        values=np.zeros((0, 4), dtype=np.float32),
        covered=VersionVector.of({(0, 1): 5}),
    )
    resp = PullResponse((TableSpec("t", 4),), (b,))
    back = decode_response(encode_response(resp, Encoding(dtype, zstd=True)))  # type: ignore[arg-type]
    assert back.batches[0].n == 0 and back.batches[0].covered == b.covered
    assert back.batches[0].values.shape == (0, 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 40), st.integers(1, 9), st.booleans(), st.booleans())
def test_version_1_frames_still_decode(seed: int, n: int, dim: int, zstd: bool, two: bool) -> None:
    # A peer that predates frame version 2 sends version 1: the decoder reads both.
    r = _response(seed, n, dim, two)
    old = encode_response(r, Encoding("float32", zstd, version=1))
    assert old[4] == 1
    out = decode_response(old)
    _same(r.batches[0], out.batches[0])
    order = np.argsort(r.batches[0].keys)
    assert np.array_equal(r.batches[0].values[order], out.batches[0].values)


def test_version_2_columns_take_the_narrowest_width_and_keep_every_value() -> None:
    # Extreme keys (the whole int64 span) and seqs; publish times in batches (a step table,
    # exact) and scattered (whole milliseconds).
    keys = np.array([-(2**63), -5, 0, 7, 2**63 - 1], dtype=np.int64)
    seqs = np.array([10, 11, 12, 13, 2**40], dtype=np.int64)
    for times, atol in (
        (np.array([5.0, 5.0, 5.0, 5.0, 5.0]) + 1e9, 0.0),
        (np.arange(5) * 0.0371, 5e-4),
    ):
        b = Batch.of(
            "t",
            0,
            keys,
            epochs=0,
            origins=1,
            seqs=seqs,
            publish_times=times,
            values=np.ones((5, 3)),
        )
        out = decode_response(encode_response(PullResponse((TableSpec("t", 3),), (b,))))
        got = out.batches[0]
        assert np.array_equal(got.keys, keys) and np.array_equal(got.seqs, seqs)
        assert np.allclose(got.publish_times, times, rtol=0, atol=atol)
        assert out.complete and out.backlog == 0
    # Small deltas travel in one byte each: 200 consecutive keys cost about 200 bytes of keys.
    many = Batch.of(
        "t",
        0,
        np.arange(200),
        epochs=0,
        origins=1,
        seqs=1,
        publish_times=0.0,
        values=np.ones((200, 3)),
    )
    resp = PullResponse((TableSpec("t", 3),), (many,))
    v1 = encode_response(resp, Encoding(version=1))
    v2 = encode_response(resp)
    assert len(v1) - len(v2) >= 200 * (8 + 4 + 4 + 1 - 2)


def test_unknown_frame_versions_are_refused() -> None:
    frame = bytearray(encode_response(_response(1, 3, 2)))
    frame[4] = 5
    with pytest.raises(CodecError, match="version 5"):
        decode_response(bytes(frame))
    as_request = bytearray(encode_response(_response(1, 3, 2)))
    as_request[6] = 2  # version 4's kind byte: a request frame, which stays in version 1
    with pytest.raises(CodecError, match="version 4"):
        decode_request(bytes(as_request))
    with pytest.raises(ValueError, match="frame version"):
        encode_response(_response(1, 3, 2), Encoding(version=7))


def test_a_puller_that_predates_version_2_is_answered_in_version_1() -> None:
    s = Store()
    s.declare(TableSpec("t", 2))
    req = s.pull_request(1000, "int8")
    assert decode_request(encode_request(req)).frame_version == 3
    # An old puller's request has no "fv": strip it and re-seal the frame.
    frame = encode_request(req)
    meta_len = struct.unpack_from("<I", frame, 8)[0]
    meta = frame[HEADER_BYTES : HEADER_BYTES + meta_len].replace(b',"fv":3', b"")
    old = _reframe(frame, meta, frame[HEADER_BYTES + meta_len :])
    assert decode_request(old).frame_version == 1


def test_the_server_answers_in_the_version_the_puller_reads() -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from ekko.updates.wire import UpdateMetrics, UpdateServer

    s = Store()
    s.declare(TableSpec("t", 2))
    s.write("t", [1, 2], np.ones((2, 2)), epoch=0, origin=1, seqs=[1, 2], publish_time=0.0)
    server = UpdateServer(s, Scheduler(), UpdateMetrics(CollectorRegistry()))
    for fv in (1, 2, 3, 4):
        req = Store().pull_request(1 << 20)
        req = type(req)(req.knowledge, req.budget_bytes, frame_version=fv)
        data = asyncio.run(server.serve_pull(encode_request(req), 0.0))
        assert data[4] == fv
        assert sorted(decode_response(data).batches[0].keys.tolist()) == [1, 2]


# --- frame version 4: binary metadata ------------------------------------------------------------


def _body4(frame: bytes) -> tuple[bytes, int]:
    """The (decompressed) body of a version 4 frame and its flags."""
    flags = frame[5]
    pos, body_len, shift = 11, 0, 0
    while True:
        byte = frame[pos]
        body_len |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            break
    payload = frame[pos:]
    if flags & 1:
        d = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
        payload = d.decompress(payload, max_output_size=body_len)
    return payload, flags


def _reseal4(body: bytes, flags: int, kind: int = 1) -> bytes:
    """A version 4 frame around ``body`` with a correct length and checksum (fuzz reaches the
    metadata parser)."""
    payload = body
    if flags & 1:
        params = zstandard.ZstdCompressionParameters.from_level(
            3, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_content_size=0, write_dict_id=0
        )
        payload = zstandard.ZstdCompressor(compression_params=params).compress(body)
    n, length = len(body), bytearray()
    while n >= 0x80:
        length.append((n & 0x7F) | 0x80)
        n >>= 7
    length.append(n)
    crc = zlib.crc32(payload, zlib.crc32(bytes(length)))
    return struct.pack("<4sBBBI", b"EKUP", 4, flags, kind, crc) + bytes(length) + payload


V4_FRAMES = [f for f in FRAMES if f[4] == 4]


def _same_response(a: PullResponse, b: PullResponse) -> None:
    assert a.tables == b.tables
    assert (a.complete, a.backlog, a.source, a.number) == (
        b.complete,
        b.backlog,
        b.source,
        b.number,
    )
    assert len(a.batches) == len(b.batches)
    for x, y in zip(a.batches, b.batches, strict=True):
        assert (x.table, x.part, x.covered) == (y.table, y.part, y.covered)
        for name in ("keys", "epochs", "origins", "seqs", "publish_times", "values", "classes"):
            assert np.array_equal(getattr(x, name), getattr(y, name)), name
        assert (x.residual is None) == (y.residual is None)
        if x.residual is not None and y.residual is not None:
            assert np.array_equal(x.residual, y.residual)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**31),
    st.integers(0, 40),
    st.integers(1, 17),
    st.sampled_from(["float32", "float16", "int8"]),
    st.booleans(),
    st.booleans(),
)
def test_version_4_decodes_to_exactly_what_version_3_does(
    seed: int, n: int, dim: int, dtype: str, zstd: bool, steps: bool
) -> None:
    """Binary metadata is a new encoding of the same fields: every decoded figure is equal
    (residual rows, step tables of publish times, microsecond or float64 times, several
    sources, a section without rows, the catalogue, an incomplete response's backlog)."""
    r = _residual_response(seed, n, dim, steps) if n else _response(seed, 0, dim)
    if seed % 3 == 0:  # a response without the catalogue (the puller holds it)
        r = dataclasses.replace(r, tables=(), complete=False, backlog=seed % 1000)
    enc3 = Encoding(dtype, zstd, version=3)  # type: ignore[arg-type]
    enc4 = Encoding(dtype, zstd, version=4)  # type: ignore[arg-type]
    v3, v4 = encode_response(r, enc3), encode_response(r, enc4)
    assert v4[4] == 4 and v4[5] == (1 if zstd else 0)
    _same_response(decode_response(v3), decode_response(v4))


def test_version_4_publish_times_are_exact() -> None:
    """A trainer that published in batches gets an exact step table of times: whole
    microseconds travel as varint deltas, other times as float64; either way the decoded time
    is the sent one, bit for bit (as in version 3's JSON)."""
    for first, second in ((3.001, 1e9 + 0.5), (1.7e9 + 0.123456789, 0.1 + 0.2 + 7), (1e14, 5e14)):
        times = [first] * 8 + [second] * 8
        b = Batch.of(
            "t",
            0,
            np.arange(16) * 3,
            epochs=0,
            origins=1,
            seqs=np.arange(1, 17),
            publish_times=times if first < second else times[::-1],
            values=np.ones((16, 2)),
        )
        r = PullResponse((TableSpec("t", 2),), (b,), True, 0)
        got = decode_response(encode_response(r)).batches[0]
        assert got.publish_times.tolist() == b.publish_times.tolist()


def test_version_4_metadata_is_smaller_than_version_3s() -> None:
    r = _residual_response(5, 40, 16, steps=True)
    for enc in (Encoding("int8", True), Encoding("float32", False)):
        v3 = encode_response(r, dataclasses.replace(enc, version=3))
        v4 = encode_response(r, enc)
        assert len(v4) < len(v3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(V4_FRAMES))), st.data())
def test_fuzzed_version_4_metadata_raises_only_codec_errors(
    which: int, data: st.DataObject
) -> None:
    """Bytes changed, cut or inserted inside a version 4 body, the frame re-sealed with a right
    length and checksum (so the metadata parser itself meets the damage)."""
    body, flags = _body4(V4_FRAMES[which])
    b = bytearray(body)
    how = data.draw(st.sampled_from(["set", "cut", "insert", "truncate-meta"]))
    head = min(len(b), 120)  # the metadata leads the body
    if how == "set":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, head - 1))
            b[i] = data.draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF, b[i] ^ 1]))
    elif how == "cut":
        i = data.draw(st.integers(0, head - 1))
        del b[i : i + data.draw(st.integers(1, 8))]
    elif how == "insert":
        i = data.draw(st.integers(0, head))
        b[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        b = b[: data.draw(st.integers(0, head))]
    _decode_any(_reseal4(bytes(b), flags))


def test_version_4_damage_names_the_problem() -> None:
    frame = V4_FRAMES[0]
    body, flags = _body4(frame)
    assert decode_response(_reseal4(body, flags)).n_rows == 10  # the re-sealer itself is right
    with pytest.raises(CodecError, match="truncated"):
        decode_response(_reseal4(body[:3], flags))
    with pytest.raises(CodecError, match="varint too long"):
        decode_response(_reseal4(b"\x80" * 11 + body, flags))
    with pytest.raises(CodecError, match="checksum"):
        decode_response(frame[:-1])
    with pytest.raises(CodecError, match="flags"):
        decode_response(_reseal4(body, flags | 2))


def test_a_node_pulls_in_version_4_from_a_publisher(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node announces the newest frame version it reads, so a real pull over loopback is
    answered (and decoded) in version 4, int8 + zstd residuals included."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from ekko.updates import node as node_mod
    from ekko.updates.link import LinkSpec
    from ekko.updates.node import Node, NodeConfig, Upstream
    from ekko.updates.publisher import Publisher

    seen: list[int] = []
    real = node_mod.decode_response

    def spy(data: bytes) -> PullResponse:
        seen.append(data[4])
        return real(data)

    monkeypatch.setattr(node_mod, "decode_response", spy)
    spec = TableSpec("emb", 4)

    async def scenario() -> None:
        pub = Publisher(1, [spec], registry=CollectorRegistry())
        port = await pub.start("127.0.0.1", 0)
        up = Upstream(f"http://127.0.0.1:{port}", LinkSpec(), "r0")
        cfg = NodeConfig(
            name="a", region="r1", upstreams=(up,), listen="127.0.0.1:0", wait=0.5, retry=0.05
        )
        cfg = dataclasses.replace(cfg, dtype="int8", zstd=True)
        a = Node(cfg, CollectorRegistry())
        await a.start()
        try:
            rng = np.random.default_rng(0)
            for _ in range(5):
                pub.publish("emb", np.arange(20), rng.normal(size=(20, 4)))
                await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while a.store.knowledge(("emb", 0)).vector != pub.store.knowledge(("emb", 0)).vector:
                assert loop.time() < deadline, "the node did not converge"
                await asyncio.sleep(0.02)
        finally:
            await a.stop()
            await pub.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert seen and set(seen) == {4}
