"""The update benchmark's message-log baseline: the same writes through NATS JetStream.

What teams run today instead of a state-based data plane: the trainer publishes every write to a
durable stream, every inference server consumes the stream in order and applies what it reads.
Here: one ``nats-server -js`` (file storage) in the training region, a publisher process (the
trainer side) replaying the writes at their stream times — one message per tick and table
holding that tick's rows (key, version, publish time, fp32 values; optionally zstd) — and one
agent process per inference server with an ordered push consumer that applies every row into an
:class:`ekko.updates.store.Store` and logs it like the nodes' ``--apply-log``.

WAN links are emulated like the procs mode's: a user-space TCP proxy per inference region (one
listener all of the region's agents connect through, sharing one token bucket and the one-way
delay each way), so every server's copy of the stream crosses the WAN (a log has no per-region
leader; JetStream's stream mirrors could give it one, which this baseline does not configure).
WAN bytes are the bytes the proxies carried towards the agents (the whole NATS protocol: message
headers, JetStream metadata, heartbeats). CPU is every process's user + system time from
``/proc`` just before it is stopped (the proxies, i.e. the emulated network, excluded).

Needs the optional ``bench`` extra (``nats-py``) and a ``nats-server`` binary: built from the Go
module proxy into ``$EKKO_CACHE/tools/nats-server-<version>/bin`` by :func:`nats_server_binary`
(or ``$NATS_SERVER``). CI does not run this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.updates_procs import _free_port, _read_log, cpu_seconds, paced_batches, save_writes
from bench.updates_sim import TABLES, Writes, lag_stats, served_quality

PY = sys.executable
NATS_SERVER_MODULE = "github.com/nats-io/nats-server/v2"
NATS_SERVER_VERSION = "v2.15.2"
SUBJECT = "updates"
STREAM = "UPDATES"
_HEAD = struct.Struct("<BBId")  # table, zstd, rows, publish wall time


# -- the nats-server binary ---------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get("EKKO_CACHE") or Path.home() / ".cache" / "ekko").expanduser()


def nats_server_binary() -> Path:
    """``$NATS_SERVER``, else the cached build, else build it (``go install`` from the Go
    module proxy into the cache, like e2e/cluster's tools: about a minute)."""
    env = os.environ.get("NATS_SERVER")
    if env:
        return Path(env)
    root = _cache_root() / "tools" / f"nats-server-{NATS_SERVER_VERSION}"
    binary = root / "bin" / "nats-server"
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        raise RuntimeError("nats-server is not built and `go` is not on PATH (or set NATS_SERVER)")
    root.mkdir(parents=True, exist_ok=True)
    goenv = dict(os.environ)
    goenv.update(
        GOMODCACHE=str(root / "gomod"),
        GOCACHE=str(root / "gocache"),
        GOPATH=str(root / "gopath"),
        GOBIN=str(root / "bin"),
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOFLAGS="-modcacherw -buildvcs=false",
    )
    goenv.pop("GOWORK", None)
    print(f"building nats-server {NATS_SERVER_VERSION} into {root} ...", flush=True)
    subprocess.run(
        [
            "go",
            "install",
            "-p",
            "2",
            "-trimpath",
            "-ldflags=-s -w",
            f"{NATS_SERVER_MODULE}@{NATS_SERVER_VERSION}",
        ],
        cwd=root,
        env=goenv,
        check=True,
    )
    return binary


# -- messages -----------------------------------------------------------------------------------


def encode_message(  # noqa: PLR0917
    table: int, keys: np.ndarray, seqs: np.ndarray, wall: float, values: np.ndarray, zstd: bool
) -> bytes:
    """One tick's rows of one table: keys and seqs (int64), fp32 values; optionally zstd."""
    body = (
        keys.astype("<i8").tobytes()
        + seqs.astype("<i8").tobytes()
        + values.astype("<f4", copy=False).tobytes()
    )
    if zstd:
        import zstandard

        body = zstandard.ZstdCompressor(level=3).compress(body)
    return _HEAD.pack(table, int(zstd), len(keys), wall) + body


def decode_message(
    data: bytes, widths: list[int]
) -> tuple[int, np.ndarray, np.ndarray, float, np.ndarray]:
    table, zstd, n, wall = _HEAD.unpack_from(data)
    body = data[_HEAD.size :]
    if zstd:
        import zstandard

        body = zstandard.ZstdDecompressor().decompress(body)
    keys = np.frombuffer(body, "<i8", n, 0)
    seqs = np.frombuffer(body, "<i8", n, 8 * n)
    values = np.frombuffer(body, "<f4", n * widths[table], 16 * n).reshape(n, widths[table])
    return table, keys, seqs, wall, values


# -- the publisher (trainer side) ----------------------------------------------------------------


async def _publisher(  # noqa: PLR0917
    writes: Path, url: str, log: Path, start_file: Path, tick: float, zstd: bool
) -> None:
    import nats

    d = np.load(writes)
    gkey, table, t, values = d["gkey"], d["table"], d["t"], d["values"]
    widths, offsets = d["widths"].tolist(), d["offsets"].tolist()
    nc = await nats.connect(url)
    js = nc.jetstream()
    wall = np.zeros(len(gkey), dtype=np.float64)
    async for tab, sel in paced_batches(t, table, start_file, tick):
        at = time.time()
        msg = encode_message(
            tab, gkey[sel] - offsets[tab], sel + 1, at, values[sel, : widths[tab]], zstd
        )
        wall[sel] = at
        await js.publish(f"{SUBJECT}.{TABLES[tab]}", msg)  # acknowledged by the stream
    await nc.drain()
    np.savez(log, seqs=np.arange(1, len(gkey) + 1), wall=wall, cpu=time.process_time())


# -- an agent (inference server) -----------------------------------------------------------------


async def _agent(writes: Path, url: str, log: Path, ready: Path) -> None:
    import nats

    from ekko.updates.store import Store, TableSpec

    d = np.load(writes)
    widths = d["widths"].tolist()
    store = Store()
    for name, wd in zip(TABLES, widths, strict=True):
        store.declare(TableSpec(name, int(wd), model="mf"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def report(e: Exception) -> None:
        print(f"nats client error: {e!r}", file=sys.stderr, flush=True)

    nc = await nats.connect(url, max_reconnect_attempts=-1, error_cb=report)
    js = nc.jetstream()
    received = [0]
    with log.open("w") as out:

        async def on_msg(msg: Any) -> None:
            try:
                await apply(msg)
            except Exception as e:  # nats-py drops a callback's exception silently
                print(f"apply failed: {e!r}", file=sys.stderr, flush=True)
                raise

        async def apply(msg: Any) -> None:
            tab, keys, seqs, wall, values = decode_message(msg.data, widths)
            received[0] += len(keys)
            res = store.write(
                TABLES[tab], keys, values, epoch=0, origin=1, seqs=seqs, publish_time=wall
            )
            now = time.time()
            for applied in res:
                out.writelines(
                    f"{now:.6f},{TABLES[tab]},{k},0,1,{s}\n"
                    for k, s in zip(applied.keys.tolist(), applied.seqs.tolist(), strict=True)
                )
            out.flush()  # the orchestrator watches the log grow to see the backlog drain

        sub = await js.subscribe(f"{SUBJECT}.>", cb=on_msg, ordered_consumer=True)
        ready.write_text("ok")
        await stop.wait()
        log.with_suffix(".rx").write_text(str(received[0]))
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    with contextlib.suppress(Exception):
        await nc.close()


# -- the WAN proxy -------------------------------------------------------------------------------


async def _proxy(specs: list[tuple[int, int, float, float | None]], counts: Path) -> None:
    """``specs``: (listen port, target port, one-way delay, rate in bytes/s or None)."""
    from ekko.updates.link import TokenBucket

    totals = [0] * len(specs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    servers = []
    for idx, (listen, target, delay, rate) in enumerate(specs):
        bucket = TokenBucket(rate, max(8192.0, rate * 0.25), time.monotonic()) if rate else None
        lock = asyncio.Lock()

        async def pump(  # noqa: PLR0917
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            down: bool,
            idx: int = idx,
            delay: float = delay,
            bucket: TokenBucket | None = bucket,
            lock: asyncio.Lock = lock,
        ) -> None:
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def send() -> None:
                while True:
                    at, chunk = await queue.get()
                    if not chunk:
                        break
                    wait = at - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if down and bucket is not None:
                        async with lock:
                            now = time.monotonic()
                            ready = bucket.ready_at(len(chunk), now)
                            if ready > now:
                                await asyncio.sleep(ready - now)
                            bucket.consume(len(chunk), time.monotonic())
                    if down:
                        totals[idx] += len(chunk)
                    writer.write(chunk)
                    await writer.drain()
                writer.close()

            sender = asyncio.create_task(send())
            try:
                while chunk := await reader.read(1 << 16):
                    queue.put_nowait((time.monotonic() + delay, chunk))
            except ConnectionError:
                pass
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(ConnectionError):
                await sender

        async def handle(
            client_r: asyncio.StreamReader,
            client_w: asyncio.StreamWriter,
            target: int = target,
            pump: Any = pump,
        ) -> None:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
            await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True))

        servers.append(await asyncio.start_server(handle, "127.0.0.1", listen))
    counts.write_text(json.dumps(totals))  # the file's existence says: listening
    await stop.wait()
    counts.write_text(json.dumps(totals))
    for s in servers:
        s.close()


# -- orchestration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsConfig:
    regions: int = 2
    servers: int = 2
    wan_delay_s: float = 0.040
    wan_rate: float | None = None  # bytes/s per region's WAN link (None: uncapped)
    zstd: bool = False
    tick_s: float = 0.01


def _wait_file(path: Path, procs: list[subprocess.Popen[bytes]], timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not path.exists():
        if time.time() > end or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"{path.name} did not appear (see the .err files next to it)")
        time.sleep(0.05)


def _wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def _make_stream(url: str) -> None:
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=STREAM, subjects=[f"{SUBJECT}.>"], storage=StorageType.FILE)
    )
    await nc.close()


def run_nats(w: Writes, cfg: NatsConfig, workdir: Path, eval_from: int) -> dict[str, Any]:
    """One live run through JetStream; returns lag, WAN bytes, CPU and served quality."""
    workdir.mkdir(parents=True, exist_ok=True)
    wfile = workdir / "writes.npz"
    if not wfile.exists():
        save_writes(w, wfile)
    binary = nats_server_binary()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    store_dir = workdir / "js"
    shutil.rmtree(store_dir, ignore_errors=True)
    start_file, plog, counts = workdir / "start", workdir / "publisher.npz", workdir / "wan.json"
    for f in (start_file, plog, counts):
        f.unlink(missing_ok=True)
    duration = float(w.t[-1]) + 1.0
    agents: list[tuple[str, int, subprocess.Popen[bytes]]] = []
    cpu: dict[str, float] = {}
    try:
        server = subprocess.Popen(
            [str(binary), "-js", "-sd", str(store_dir), "-a", "127.0.0.1", "-p", str(port)],
            stderr=(workdir / "nats-server.err").open("wb"),
            stdout=subprocess.DEVNULL,
        )
        procs.append(server)
        _wait_port(port)
        asyncio.run(_make_stream(url))
        proxy_ports = [_free_port() for _ in range(cfg.regions)]
        specs = [
            [pp, port, cfg.wan_delay_s, cfg.wan_rate if cfg.wan_rate else 0.0] for pp in proxy_ports
        ]
        proxy = subprocess.Popen(
            [
                PY,
                "-m",
                "bench.updates_nats",
                "proxy",
                "--specs",
                json.dumps(specs),
                "--counts",
                str(counts),
            ],
            env=env,
            stderr=(workdir / "proxy.err").open("wb"),
        )
        procs.append(proxy)
        _wait_file(counts, procs)
        for r in range(cfg.regions):
            for s in range(cfg.servers):
                name = f"r{r}s{s}"
                ready, alog = workdir / f"{name}.ready", workdir / f"{name}.csv"
                ready.unlink(missing_ok=True)
                cmd = [PY, "-m", "bench.updates_nats", "agent", "--writes", str(wfile)]
                cmd += ["--url", f"nats://127.0.0.1:{proxy_ports[r]}", "--log", str(alog)]
                cmd += ["--ready", str(ready)]
                p = subprocess.Popen(cmd, env=env, stderr=(workdir / f"{name}.err").open("wb"))
                procs.append(p)
                agents.append((name, r, p))
        for name, _, _ in agents:
            _wait_file(workdir / f"{name}.ready", procs)
        cmd = [PY, "-m", "bench.updates_nats", "publisher", "--writes", str(wfile), "--url", url]
        cmd += ["--log", str(plog), "--start-file", str(start_file), "--tick", str(cfg.tick_s)]
        if cfg.zstd:
            cmd.append("--zstd")
        pub = subprocess.Popen(cmd, env=env, stderr=(workdir / "publisher.err").open("wb"))
        procs.append(pub)
        start_at = time.time() + 1.0
        start_file.write_text(repr(start_at))
        time.sleep(max(0.0, start_at - time.time()) + duration)
        pub.wait(timeout=300)
        # Let the agents drain what the links still hold (a capped log can be far behind, and
        # its first rows can take seconds): at least 10 s, then until the logs stopped growing
        # for 6 s, at most twice the stream's duration.
        drained = time.time()
        drain_until = drained + max(10.0, 2 * duration)
        last, still = -1, 0
        while time.time() < drain_until:
            size = sum((workdir / f"{n}.csv").stat().st_size for n, _, _ in agents)
            still = still + 1 if size == last else 0
            if still >= 3 and time.time() - drained >= 10.0:
                break
            last = size
            time.sleep(2.0)
        cpu["nats-server"] = cpu_seconds(server.pid)
        for name, _, p in agents:
            cpu[name] = cpu_seconds(p.pid)
    finally:
        _stop(procs)
    wan = json.loads(counts.read_text())
    return _analyse(w, workdir, [(n, r) for n, r, _ in agents], wan, cpu, start_at, eval_from)


def _analyse(  # noqa: PLR0917
    w: Writes,
    workdir: Path,
    agents: list[tuple[str, int]],
    wan: list[int],
    cpu: dict[str, float],
    start_at: float,
    eval_from: int,
) -> dict[str, Any]:
    o = np.load(workdir / "publisher.npz")
    pub_wall = o["wall"]
    cpu = {"publisher": float(o["cpu"]), **cpu}
    lags, aucs, losses, rows, received = [], [], [], {}, []
    for name, _ in agents:
        at, _, seq = _read_log(workdir / f"{name}.csv")
        wid = seq - 1
        lags.append(at - pub_wall[wid])
        a, ll = served_quality(w, at - start_at, wid, eval_from)
        aucs.append(a)
        losses.append(ll)
        rows[name] = int(wid.size)
        rx = workdir / f"{name}.rx"
        received.append(int(rx.read_text()) if rx.exists() else -1)
    agent_cpu = [cpu[n] for n, _ in agents]
    return {
        "lag_cross_region": lag_stats(np.concatenate(lags)),
        "lag_all_servers": lag_stats(np.concatenate(lags)),  # every server consumes across the WAN
        "wan_bytes": float(sum(wan)),
        "wan_bytes_per_region": wan,
        "wan_rate_per_link_Bps": float(sum(wan)) / max(float(w.t[-1]), 1e-9) / len(wan),
        "auc": float(np.mean(aucs)),
        "logloss": float(np.mean(losses)),
        "auc_per_server": aucs,
        "rows_applied": rows,
        "rows_written": len(w),
        # Rows of the stream each server had received when the run stopped (the lag figures
        # cover only these: a log behind a capped link delivers the rest later, in order).
        "received_fraction": [r / len(w) for r in received],
        "cpu_s": cpu,
        "cpu_s_total": float(np.nansum(list(cpu.values()))),
        "cpu_s_per_server": float(np.mean(agent_cpu)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.updates_nats")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("publisher", help="the trainer side: publish writes at their times")
    p.add_argument("--writes", type=Path, required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--start-file", type=Path, required=True)
    p.add_argument("--tick", type=float, default=0.01)
    p.add_argument("--zstd", action="store_true")
    g = sub.add_parser("agent", help="an inference server: consume the stream, apply, log")
    g.add_argument("--writes", type=Path, required=True)
    g.add_argument("--url", required=True)
    g.add_argument("--log", type=Path, required=True)
    g.add_argument("--ready", type=Path, required=True)
    x = sub.add_parser("proxy", help="the emulated WAN links")
    x.add_argument("--specs", required=True, help="JSON [[listen, target, delay, rate], ...]")
    x.add_argument("--counts", type=Path, required=True)
    a = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if a.cmd == "publisher":
            asyncio.run(_publisher(a.writes, a.url, a.log, a.start_file, a.tick, a.zstd))
        elif a.cmd == "agent":
            asyncio.run(_agent(a.writes, a.url, a.log, a.ready))
        else:
            specs = [
                (int(s[0]), int(s[1]), float(s[2]), float(s[3]) or None)
                for s in json.loads(a.specs)
            ]
            asyncio.run(_proxy(specs, a.counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
