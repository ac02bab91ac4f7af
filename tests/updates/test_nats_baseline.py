"""The message-log baseline of the update benchmark (bench/updates_nats.py): its message format
and its emulated WAN link. No NATS needed: the broker runs only in the benchmark."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from bench.updates_nats import _proxy, decode_message, encode_message
from bench.updates_procs import _free_port, cpu_seconds


@pytest.mark.parametrize("zstd", [False, True])
def test_a_message_round_trips_its_rows(zstd: bool) -> None:
    rng = np.random.default_rng(0)
    keys, seqs = rng.integers(0, 1 << 40, 7), np.arange(100, 107)
    values = rng.normal(size=(7, 3)).astype(np.float32)
    data = encode_message(1, keys, seqs, 12.5, values, zstd)
    table, k, s, wall, v = decode_message(data, [8, 3, 1])
    assert (table, wall) == (1, 12.5)
    np.testing.assert_array_equal(k, keys)
    np.testing.assert_array_equal(s, seqs)
    np.testing.assert_array_equal(v, values)


def test_the_wan_proxy_carries_and_counts_the_bytes_towards_the_client(tmp_path: Path) -> None:
    payload = os.urandom(200_000)

    async def scenario() -> None:
        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readexactly(5)  # the client's hello crosses the link upstream
            w.write(payload)
            await w.drain()
            w.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[1]
        listen, counts = _free_port(), tmp_path / "wan.json"
        proxy = asyncio.create_task(_proxy([(listen, target, 0.01, 400_000.0)], counts))
        while not counts.exists():
            await asyncio.sleep(0.01)
        r, w = await asyncio.open_connection("127.0.0.1", listen)
        w.write(b"hello")
        got = await r.read(-1)
        w.close()
        os.kill(os.getpid(), signal.SIGINT)  # the proxy writes its final counts and stops
        await proxy
        server.close()
        assert got == payload
        assert json.loads(counts.read_text()) == [len(payload)]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_cpu_seconds_of_a_live_and_a_missing_process() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert np.isnan(cpu_seconds(2**22 + 12345))
