"""``--mode procs`` of the update benchmark: real processes on loopback.

One origin process (this module's ``origin`` command: the trainer's side, calling the real
:class:`ekko.updates.publisher.Publisher` library and serving its pull endpoint) and ``regions`` ×
``servers`` real ``python -m ekko.updates.node`` processes: per region a leader pulling from the
origin across an emulated WAN link (the node's ``--rate/--burst/--delay`` options: token bucket
plus one-way delay each way) and followers pulling from their leader (1 ms). The trainer's writes
are computed beforehand (:func:`bench.updates_sim.train_writes`, the same as ``--mode sim``) and
published at their stream times (ticks of ``tick_s``); the origin logs the seq and wall time of
every write, each node its ``--apply-log``. Afterwards, lag comes from the logs (apply wall time
minus publish wall time; leader → follower from the two apply times), WAN bytes from the leaders'
``ekko_update_wire_bytes_total`` (responses, as in the sim), and served quality by replaying the
evaluation events against what each node held when (:func:`bench.updates_sim.served_quality`), so
a busy machine slows the run but does not distort the quality computation itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.updates_sim import TABLES, Writes, lag_stats, served_quality
from ekko.updates.store import TableSpec

PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``; NaN once gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def save_writes(w: Writes, path: Path) -> None:
    np.savez(
        path,
        gkey=w.gkey,
        table=w.table,
        t=w.t,
        values=w.values,
        widths=np.array(w.widths),
        offsets=np.array(w.offsets),
    )


# -- the origin process --------------------------------------------------------------------------


async def paced_batches(
    t: np.ndarray, table: np.ndarray, start_file: Path, tick: float
) -> AsyncIterator[tuple[int, np.ndarray]]:
    """Replay writes at their stream times: wait for the orchestrator's start file (it holds the
    wall-clock start, written once every node is up), then every ``tick`` yield, per table, the
    indices of the writes that are due by now (``t`` sorted, seconds after the start)."""
    while not start_file.exists():
        await asyncio.sleep(0.05)
    start_at = float(start_file.read_text())
    await asyncio.sleep(max(0.0, start_at - time.time()))
    i, n = 0, len(t)
    while i < n:
        now = time.time() - start_at
        j = int(np.searchsorted(t, now + 1e-9, side="right"))
        if j <= i:
            await asyncio.sleep(min(tick, float(t[i]) - now))
            continue
        ids = np.arange(i, j)
        for tab in range(len(TABLES)):
            sel = ids[table[ids] == tab]
            if sel.size:
                yield tab, sel
        i = j
        await asyncio.sleep(tick)


async def _origin(
    writes: Path, listen: str, log: Path, *, start_file: Path, tick: float, hold: float
) -> None:
    from ekko.updates.publisher import Publisher

    d = np.load(writes)
    gkey, table, t, values = d["gkey"], d["table"], d["t"], d["values"]
    widths, offsets = d["widths"].tolist(), d["offsets"].tolist()
    specs = [TableSpec(name, int(wd), model="mf") for name, wd in zip(TABLES, widths, strict=True)]
    pub = Publisher(1, specs, region="train")
    host, port = listen.rsplit(":", 1)
    await pub.start(host, int(port))
    seqs = np.zeros(len(gkey), dtype=np.int64)
    wall = np.zeros(len(gkey), dtype=np.float64)
    async for tab, sel in paced_batches(t, table, start_file, tick):
        name = TABLES[tab]
        last = pub.publish(name, gkey[sel] - offsets[tab], values[sel, : widths[tab]])
        seqs[sel] = last - sel.size + 1 + np.arange(sel.size)
        wall[sel] = time.time()
    np.savez(log, seqs=seqs, wall=wall)
    await asyncio.sleep(hold)
    await pub.stop()


# -- orchestration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcsConfig:
    regions: int = 2
    servers: int = 2
    wan_delay_s: float = 0.040
    lan_delay_s: float = 0.001
    wan_rate: float | None = None  # bytes/s per leader's WAN link (None: uncapped)
    burst_s: float = 0.25
    policy: str = "ekko"
    dtype: str = "float32"
    zstd: bool = False
    tick_s: float = 0.01


def _wait_http(url: str, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_procs(w: Writes, cfg: ProcsConfig, workdir: Path, eval_from: int) -> dict[str, Any]:
    """One live run; returns lag, bytes and served quality."""
    workdir.mkdir(parents=True, exist_ok=True)
    wfile = workdir / "writes.npz"
    if not wfile.exists():
        save_writes(w, wfile)
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    duration = float(w.t[-1]) + 1.0
    origin_port = _free_port()
    start_file = workdir / "start"
    start_file.unlink(missing_ok=True)
    start_at = math.inf
    olog = workdir / "origin.npz"
    olog.unlink(missing_ok=True)
    nodes: list[tuple[str, int, bool, int]] = []  # name, port, leader, region
    try:
        cmd = [PY, "-m", "bench.updates_procs", "origin", "--writes", str(wfile)]
        cmd += ["--listen", f"127.0.0.1:{origin_port}", "--log", str(olog)]
        cmd += ["--start-file", str(start_file), "--tick", str(cfg.tick_s), "--hold", "60"]
        procs.append(subprocess.Popen(cmd, env=env, stderr=(workdir / "origin.err").open("wb")))
        _wait_http(f"http://127.0.0.1:{origin_port}/healthz")
        for r in range(cfg.regions):
            leader_port = 0
            for s in range(cfg.servers):
                name, port = f"r{r}s{s}", _free_port()
                node = [PY, "-m", "ekko.updates.node", "--name", name, "--region", f"r{r}"]
                node += ["--listen", f"127.0.0.1:{port}", "--policy", cfg.policy]
                node += ["--dtype", cfg.dtype, "--wait", "5"]
                if cfg.zstd:
                    node.append("--zstd")
                if s == 0:
                    node += ["--upstream", f"http://127.0.0.1:{origin_port}"]
                    node += ["--upstream-region", "train", "--delay", str(cfg.wan_delay_s)]
                    if cfg.wan_rate is not None:
                        burst = max(8192.0, cfg.wan_rate * cfg.burst_s)
                        node += ["--rate", str(cfg.wan_rate), "--burst", str(burst)]
                    leader_port = port
                else:
                    node += ["--upstream", f"http://127.0.0.1:{leader_port}"]
                    node += ["--upstream-region", f"r{r}", "--delay", str(cfg.lan_delay_s)]
                alog = workdir / f"{name}.csv"
                alog.unlink(missing_ok=True)
                node += ["--apply-log", str(alog)]
                err = (workdir / f"{name}.err").open("wb")
                procs.append(subprocess.Popen(node, env=env, stderr=err))
                nodes.append((name, port, s == 0, r))
                _wait_http(f"http://127.0.0.1:{port}/healthz")
        start_at = time.time() + 1.0
        start_file.write_text(repr(start_at))
        time.sleep(max(0.0, start_at - time.time()) + duration + 2.0)
        for _ in range(300):  # the origin writes its log when the replay is done
            if olog.exists():
                break
            time.sleep(0.2)
        time.sleep(1.0)
        metrics = {}
        for name, port, _, _ in nodes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                metrics[name] = resp.read().decode()
        # CPU of the origin and every node (user + system), for the message-log comparison.
        cpu = {"origin": cpu_seconds(procs[0].pid)}
        cpu |= {name: cpu_seconds(p.pid) for (name, *_), p in zip(nodes, procs[1:], strict=True)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    out = _analyse(w, cfg, workdir, nodes, metrics, start_at, eval_from)
    out["cpu_s"] = cpu
    out["cpu_s_total"] = float(np.nansum(list(cpu.values())))
    out["cpu_s_per_server"] = float(np.mean([cpu[n] for n, *_ in nodes]))
    return out


def _read_log(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """apply wall time, table index and seq of every applied row."""
    t, tab, seq = [], [], []
    with path.open() as fh:
        for line in fh:
            parts = line.rstrip("\n").split(",")
            if len(parts) != 6 or parts[0] == "apply_time":
                continue
            t.append(float(parts[0]))
            tab.append(TABLES.index(parts[1]))
            seq.append(int(parts[5]))
    return np.array(t), np.array(tab, dtype=np.int64), np.array(seq, dtype=np.int64)


def _analyse(  # noqa: PLR0917
    w: Writes,
    cfg: ProcsConfig,
    workdir: Path,
    nodes: list[tuple[str, int, bool, int]],
    metrics: dict[str, str],
    start_at: float,
    eval_from: int,
) -> dict[str, Any]:
    o = np.load(workdir / "origin.npz")
    seqs, pub_wall = o["seqs"], o["wall"]
    order = np.argsort(seqs)
    sorted_seqs = seqs[order]
    cross, hop, aucs, losses = [], [], [], []
    leader_at: dict[int, np.ndarray] = {}
    applied: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, *_ in nodes:
        at, _, sq = _read_log(workdir / f"{name}.csv")
        pos = np.clip(np.searchsorted(sorted_seqs, sq), 0, len(sorted_seqs) - 1)
        ok = sorted_seqs[pos] == sq
        wid = order[pos[ok]]
        applied[name] = (at[ok], wid)
    every = []  # publish -> apply on every server (followers: both hops)
    for name, _, leader, r in nodes:
        at, wid = applied[name]
        every.append(at - pub_wall[wid])
        if leader:
            cross.append(at - pub_wall[wid])
            full = np.full(len(w), np.nan)
            full[wid] = at
            leader_at[r] = full
        # Quality: stream time of each apply (event j is at w.t = j / rate after start_at).
        a, ll = served_quality(w, at - start_at, wid, eval_from)
        aucs.append(a)
        losses.append(ll)
    for name, _, leader, r in nodes:
        if not leader:
            at, wid = applied[name]
            h = at - leader_at[r][wid]
            hop.append(h[np.isfinite(h)])
    wan = sum(
        _metric(metrics[n], "ekko_update_wire_bytes_total", direction="in", peer_region="train")
        for n, _, leader, _ in nodes
        if leader
    )
    wan_raw = sum(
        _metric(metrics[n], "ekko_update_raw_bytes_total", direction="in", peer_region="train")
        for n, _, leader, _ in nodes
        if leader
    )
    publish_delay = pub_wall - (start_at + w.t)
    out: dict[str, Any] = {
        "lag_cross_region": lag_stats(np.concatenate(cross)),
        "lag_leader_follower": lag_stats(np.concatenate(hop)) if hop else None,
        "lag_all_servers": lag_stats(np.concatenate(every)),
        "publish_delay": lag_stats(publish_delay),
        "wan_bytes": wan,
        "wan_raw_bytes": wan_raw,
        "wan_rate_per_link_Bps": wan / max(float(w.t[-1]), 1e-9) / cfg.regions,
        "auc": float(np.mean(aucs)),
        "logloss": float(np.mean(losses)),
        "auc_per_server": aucs,
        "rows_applied": {n: int(a[1].size) for n, a in applied.items()},
    }
    return out


def log_fp32_bytes(w: Writes, regions: int) -> int:
    """WAN bytes of the log-style baseline: every write to every region as an fp32 row (key,
    seq, publish time, class, source: the product's per-row overhead, plus the values)."""
    from ekko.updates.store import ROW_OVERHEAD_BYTES

    widths = np.array(w.widths)[w.table]
    return int(regions * (ROW_OVERHEAD_BYTES + 4 * widths).sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.updates_procs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("origin", help="the trainer side: publish writes at their times")
    o.add_argument("--writes", type=Path, required=True)
    o.add_argument("--listen", required=True)
    o.add_argument("--log", type=Path, required=True)
    o.add_argument("--start-file", type=Path, required=True, help="holds the start wall time")
    o.add_argument("--tick", type=float, default=0.01)
    o.add_argument("--hold", type=float, default=30.0)
    a = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _origin(a.writes, a.listen, a.log, start_file=a.start_file, tick=a.tick, hold=a.hold)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
