"""The model-state manager bench runs end to end on a tiny stream and reports its figures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.updates_data import synthetic_stream
from bench.updates_health import HARM_BUCKETS, Config, Run, _bucket, main, run_one, summarize
from ekko.updates.health import GuardSpec

TINY = Config(warmup=1500, settle=400, episode=600, harmful=2, clean=1, window=200, cut_every=200)


def test_tiny_run_reports_every_figure() -> None:
    cfg = replace(TINY, harmful=1, clean=1)
    stream = synthetic_stream(cfg.events_needed, seed=3)
    r = run_one(stream, 3, cfg)
    assert r["harmful_runs"] == 1 and r["clean_runs"] == 1
    out = summarize([r], cfg)
    for key in (
        "harmful_caught",
        "harmful_runs",
        "false_rollbacks",
        "clean_runs",
        "detect_p50_s",
        "traffic_switch_p99_s",
        "restore_p99_s",
        "undo_peak_bytes_max",
        "material_caught",
        "material_runs",
        "harm_buckets",
    ):
        assert key in out
    # Every harmful episode lands in exactly one harm bucket; material ones are a subset.
    assert sum(n for _, n in out["harm_buckets"].values()) == out["harmful_runs"]
    assert sum(c for c, _ in out["harm_buckets"].values()) == out["harmful_caught"]
    assert out["material_caught"] <= out["material_runs"] <= out["harmful_runs"]
    assert out["undo_peak_bytes_max"] <= cfg.cap_bytes
    json.dumps(out)  # serialisable as is


def test_exploding_rows_are_caught_and_restored() -> None:
    cfg = TINY
    stream = synthetic_stream(cfg.events_needed, seed=0)
    run = Run(stream, 0, cfg)
    run.advance(0, cfg.warmup)
    epoch = run.epoch
    run.inject("explode", cfg.warmup)
    run.advance(cfg.warmup, cfg.warmup + cfg.episode)
    assert run.decisions, run.windows
    assert run.epoch == epoch + 1
    assert run.state.phase == "Healthy" and not run.serving_baseline


def test_the_guard_catches_zeroed_rows_the_loss_misses() -> None:
    # Zeroed popular rows cost a weak model almost no logloss; the parameter guard sees them.
    for guard_rows, caught in ((None, False), (16, True)):
        cfg = replace(
            TINY,
            guard=GuardSpec(),
            detector=replace(TINY.detector, guard_rows=guard_rows, cusum_k=None),
        )
        stream = synthetic_stream(cfg.events_needed, seed=0)
        run = Run(stream, 0, cfg)
        run.advance(0, cfg.warmup)
        assert not run.decisions
        run.inject("zero", cfg.warmup)
        run.advance(cfg.warmup, cfg.warmup + cfg.window)
        assert bool(run.decisions) is caught, run.guard_log
        assert run.guard_log[-1][2] >= 16  # the zeroed rows, counted either way


@pytest.mark.parametrize("argv", [["--workload", "synthetic", "--seeds", "1"]])
def test_main_writes_json(tmp_path: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.updates_health as mod

    monkeypatch.setattr(mod, "Config", lambda **kw: replace(TINY, **kw))
    out = tmp_path / "h.json"
    assert main([*argv, "--harmful", "1", "--clean", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["harmful_runs"] == 1 and data["workload"] == ["synthetic"]


@pytest.mark.parametrize(
    ("harm", "bucket"),
    [(-0.2, "<0.01"), (0.0, "<0.01"), (0.01, "0.01-0.03"), (0.05, "0.03-0.1"), (0.1, ">=0.1")],
)
def test_harm_buckets(harm: float, bucket: str) -> None:
    assert _bucket(harm) == bucket
    assert bucket in dict(HARM_BUCKETS)


def test_updates_bench_keys_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    # What `python -m bench.updates --mode sim --quick` adds to its JSON (issue 12), on a tiny run.
    import bench.updates_health as mod

    monkeypatch.setattr(mod, "Config", lambda **kw: replace(TINY, **kw))
    out = mod.updates_bench_keys(quick=True)
    assert set(mod.BENCH_KEYS) <= set(out)
    assert (out["harmful_runs"], out["clean_runs"]) == (5, 5)
    assert 0 <= out["harmful_caught"] <= 5 and 0 <= out["false_rollbacks"] <= 5
    assert out["health"]["recent_age_events"] == TINY.recent_age
    json.dumps(out)
    assert "caught" in mod.health_line(out)


def test_recent_view_is_scored_and_the_rollback_is_timed() -> None:
    cfg = TINY
    stream = synthetic_stream(cfg.events_needed, seed=0)
    run = Run(stream, 0, cfg)
    run.advance(0, cfg.warmup)
    # The recent view is a younger cut than the baseline, and every window records both.
    assert run.state.recent is not None and run.state.baseline is not None
    assert run.state.recent > run.state.baseline
    assert run.window_log[-1][3] > 0 and run.window_log[-1][6] > 0
    run.inject("explode", cfg.warmup)
    run.advance(cfg.warmup, cfg.warmup + cfg.episode)
    assert run.decisions
    # One switch and one restore per rollback, each a positive wall time.
    assert len(run.switches) == len(run.restores) == len(run.decisions)
    assert min(run.switches) > 0 and min(run.restores) > 0
    # After the restore the recent view reads a cut the log still holds.
    assert run.state.recent is None or run.log.has(run.state.recent)


def test_detector_flags_reach_the_spec_and_windows_are_dumped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    import bench.updates_health as mod

    monkeypatch.setattr(mod, "Config", lambda **kw: replace(TINY, **kw))
    monkeypatch.setattr(mod, "DUMP", {})
    out = tmp_path / "h.json"
    argv = ["--workload", "synthetic", "--seeds", "1", "--harmful", "1", "--clean", "1"]
    flags = ["--z", "1.5", "--recent-learn", "Clipped", "--recent-pool-shrink", "1"]
    assert main([*argv, *flags, "--dump-windows", str(tmp_path), "--json", str(out)]) == 0
    detector = json.loads(out.read_text())["detector"]
    assert (detector["z"], detector["recent_learn"], detector["recent_pool_shrink"]) == (
        1.5,
        "Clipped",
        True,
    )
    dumped = np.load(tmp_path / "synthetic-s1-1.npz")
    windows = len(dumped["ends"])
    assert windows > 0 and len(dumped["recent_n"]) == windows == len(dumped["phases"])
    assert dumped["recent"].size == dumped["recent_n"].sum() > 0
    assert dumped["base"].size == dumped["base_n"].sum() > 0
