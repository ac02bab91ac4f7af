"""The bench's product path (Store + Scheduler.respond per replica) and the procs helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.updates_data import synthetic_stream


def _writes(n: int = 600):  # type: ignore[no-untyped-def]
    from bench.updates_sim import train_writes

    return train_writes(synthetic_stream(n, 3), 1000.0, 3)


def test_product_path_replicas_end_equal_to_the_origin_uncapped_and_capped() -> None:
    from bench.updates_sim import Sim, SimConfig

    w = _writes()
    for rate in (None, 20_000.0):
        sim = Sim(w, SimConfig(product=True, wan_rate=rate, regions=2, servers=2))
        sim.end_t = float(w.t[-1]) + 30.0
        res = sim.run()
        origin = res.nodes[0]
        assert origin.store is not None
        for node in res.nodes[1:]:
            assert node.store is not None
            assert np.array_equal(node.ver, origin.ver)
            assert node.store.same_state(origin.store)


def test_product_path_is_deterministic_and_respects_the_cap() -> None:
    from bench.updates_sim import SimConfig, run_config

    w = _writes()
    cfg = SimConfig(product=True, wan_rate=15_000.0, regions=2, servers=2, seed=1)
    a = run_config(w, cfg, 100)
    b = run_config(w, cfg, 100)
    assert a["auc"] == b["auc"] and a["wan_bytes"] == b["wan_bytes"]
    duration = float(w.t[-1]) + 1.0
    burst = max(8192.0, 15_000.0 * cfg.burst_s)
    per_link = int(a["wan_bytes"]) / 2  # type: ignore[call-overload]
    assert per_link <= burst + 15_000.0 * duration


def test_procs_helpers(tmp_path: Path) -> None:
    from bench.updates_procs import _metric, _read_log, log_fp32_bytes
    from ekko.updates.store import ROW_OVERHEAD_BYTES

    w = _writes(50)
    widths = np.array(w.widths)[w.table]
    assert log_fp32_bytes(w, 2) == 2 * int((ROW_OVERHEAD_BYTES + 4 * widths).sum())
    text = (
        'ekko_update_wire_bytes_total{direction="in",peer_region="train",region="r0"} 120.0\n'
        'ekko_update_wire_bytes_total{direction="out",peer_region="r0",region="r0"} 7.0\n'
    )
    assert _metric(text, "ekko_update_wire_bytes_total", direction="in", peer_region="train") == 120
    log = tmp_path / "n.csv"
    log.write_text("apply_time,table,key,epoch,origin,seq\n1.5,item,3,0,1,42\n")
    t, tab, seq = _read_log(log)
    assert t.tolist() == [1.5] and tab.tolist() == [1] and seq.tolist() == [42]


def test_paced_batches_replays_each_write_once_per_table_and_never_early(tmp_path: Path) -> None:
    import asyncio
    import time

    from bench.updates_procs import paced_batches

    t = np.array([0.0, 0.0, 0.0, 0.05, 0.12, 0.12])
    table = np.array([0, 1, 0, 1, 0, 0])
    start_file = tmp_path / "start"

    async def collect() -> list[tuple[int, list[int], float]]:
        got = []
        async for tab, sel in paced_batches(t, table, start_file, tick=0.01):
            got.append((tab, sel.tolist(), time.time()))
        return got

    start_at = time.time() + 0.05
    start_file.write_text(repr(start_at))
    got = asyncio.run(collect())
    seen = [i for _, sel, _ in got for i in sel]
    assert sorted(seen) == list(range(len(t)))  # each write exactly once
    for tab, sel, at in got:
        assert all(table[i] == tab for i in sel)  # one table per batch
        assert at - start_at >= max(t[i] for i in sel) - 1e-6  # never before its stream time
    assert got[0][1] == [0, 2] and got[1][1] == [1]  # the first tick: table 0 then table 1
