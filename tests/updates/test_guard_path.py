"""The parameter guard on the cluster path (issue 12): the API field, the agent's node counting
the rows it applies, the operator's window over the servers' counts, and the detector acting on
them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from ekko.agent.runtime import node_config
from ekko.api.resources import ModelUpdateControl, UpdateDuty, UpdateHealth
from ekko.planning.health import detector_spec, guard_window, observe_servers, parse_guard
from ekko.updates.health import GuardCounts, GuardSpec, HealthState, decide
from ekko.updates.node import Node, NodeConfig
from ekko.updates.store import Batch, TableSpec

DIM = 8
SPEC = TableSpec("item", DIM, model="ranker")


class Writes:
    """Batches of one table with increasing sequence numbers, applied through a node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.seq = 0

    def write(self, keys: np.ndarray, values: np.ndarray) -> None:
        n = len(keys)
        seqs = np.arange(self.seq + 1, self.seq + n + 1)
        self.seq += n
        batch = Batch.of(
            "item", 0, keys, epochs=0, origins=1, seqs=seqs, publish_times=0.0, values=values
        )
        self.node._apply((SPEC,), (batch,))


def scrape(registry: CollectorRegistry) -> GuardCounts | None:
    return parse_guard(generate_latest(registry).decode(), "ranker")


def settled(guards: tuple[tuple[str, GuardSpec], ...]) -> tuple[Node, Writes, Any]:
    """A node whose item table has 2000 trained rows, each updated once (past the warm-up)."""
    registry = CollectorRegistry()
    node = Node(NodeConfig(name="n", guards=guards), registry)
    w = Writes(node)
    rng = np.random.default_rng(3)
    keys = np.arange(2000)
    w.write(keys, rng.normal(size=(2000, DIM)))
    w.write(keys, rng.normal(size=(2000, DIM)))
    return node, w, registry


def test_node_counts_zeroed_exploded_and_nonfinite_rows_it_applies() -> None:
    _node, w, registry = settled((("ranker", GuardSpec()),))
    clean = scrape(registry)
    assert clean is not None and clean.rows == 4000
    assert clean.flagged == 0 and clean.nonfinite == 0
    rng = np.random.default_rng(4)
    w.write(np.arange(100), np.zeros((100, DIM)))  # 100 trained rows wiped
    w.write(np.arange(100, 120), 50 * rng.normal(size=(20, DIM)))  # 20 exploded
    bad = np.ones((3, DIM))
    bad[0, 0], bad[1, 2], bad[2, 5] = np.nan, np.inf, -np.inf
    w.write(np.arange(200, 203), bad)
    w.write(np.arange(300, 400), rng.normal(size=(100, DIM)))  # an ordinary update
    after = scrape(registry)
    assert after == GuardCounts(rows=4223, nonfinite=3, zeroed=100, exploded=20)


def test_unguarded_model_has_no_series_and_reconfigure_turns_the_guard_on() -> None:
    node, w, registry = settled(())
    assert scrape(registry) is None
    guarded = NodeConfig(name="n", guards=(("ranker", GuardSpec(step_ratio=5.0)),))
    node.guard.configure(guarded.guards)
    assert node.guard.guards["ranker"].spec.step_ratio == 5.0
    assert scrape(registry) == GuardCounts()  # declared at zero
    w.write(np.arange(10), np.zeros((10, DIM)))
    counts = scrape(registry)
    # A guard just turned on has not seen its warm-up rows: it flags nothing yet.
    assert counts is not None and counts.rows == 10 and counts.flagged == 0
    keep = node.guard.guards["ranker"]
    node.guard.configure(guarded.guards)  # same thresholds: the running means are kept
    assert node.guard.guards["ranker"] is keep
    node.guard.configure((("ranker", GuardSpec(step_ratio=5.0, warmup=0)),))  # new: afresh
    assert node.guard.guards["ranker"] is not keep
    node.guard.configure(())
    assert node.guard.guards == {}


def test_rows_not_applied_are_not_judged() -> None:
    node, _w, registry = settled((("ranker", GuardSpec()),))
    # A stale duplicate (an older version of a held row) is ignored by the store: not judged.
    stale = Batch.of(
        "item", 0, [5], epochs=0, origins=1, seqs=1, publish_times=0.0, values=np.zeros((1, DIM))
    )
    node._apply((SPEC,), (stale,))
    counts = scrape(registry)
    assert counts is not None and counts.rows == 4000 and counts.zeroed == 0


def duty(**health: Any) -> UpdateDuty:
    return UpdateDuty.model_validate(
        {
            "model": "ranker",
            "stream": "ranker",
            "role": "Leader",
            "upstreams": [{"url": "http://a:9500"}],
            "health": health,
        }
    )


def test_node_config_guards_the_models_whose_duty_names_a_guard() -> None:
    assert node_config("s", "0.0.0.0:1", [duty()]).guards == ()
    cfg = node_config("s", "0.0.0.0:1", [duty(guard={"rows": 16, "stepRatio": 5})])
    assert cfg.guards == (("ranker", GuardSpec(step_ratio=5.0)),)
    paused = duty(guard={"rows": 16})
    paused.paused = True
    assert node_config("s", "0.0.0.0:1", [paused]).guards == (("ranker", GuardSpec()),)
    # Every threshold of the API reaches the node's guard.
    tuned = {"rows": 4, "zeroRatio": 0.05, "zeroFrom": 0.5, "normRatio": 4, "warmup": 50}
    cfg = node_config("s", "0.0.0.0:1", [duty(guard=tuned)])
    assert cfg.guards == (
        ("ranker", GuardSpec(zero_ratio=0.05, zero_from=0.5, norm_ratio=4, warmup=50)),
    )


def test_the_api_thresholds_change_what_a_node_flags() -> None:
    """A row at 3x the mean norm is ordinary by default (x10) and exploded at normRatio 2; a row
    shrunk to 5% of the mean is zeroed only with zeroRatio above 0.05; the warm-up is the API's."""
    default = node_config("s", "0.0.0.0:1", [duty(guard={"rows": 1})]).guards
    tuned = node_config(
        "s",
        "0.0.0.0:1",
        [duty(guard={"rows": 1, "normRatio": 2, "zeroRatio": 0.06, "warmup": 3000})],
    ).guards
    rng = np.random.default_rng(5)
    counts = []
    for guards in (default, tuned):
        _node, w, registry = settled(guards)
        rows = rng.normal(size=(30, DIM))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        mean = np.sqrt(DIM)  # the trained rows' norm, about
        w.write(np.arange(10), 3 * mean * rows[:10])
        w.write(np.arange(10, 20), 0.05 * mean * rows[10:20])
        counts.append(scrape(registry))
    assert counts[0] == GuardCounts(rows=4020, zeroed=0, exploded=0)
    assert counts[1] == GuardCounts(rows=4020, zeroed=10, exploded=10)
    # warmup 3000 < 4000 rows seen; a guard that has not seen its warm-up flags nothing:
    late = node_config("s", "0.0.0.0:1", [duty(guard={"rows": 1, "warmup": 10**6})]).guards
    _node, w, registry = settled(late)
    w.write(np.arange(10), np.zeros((10, DIM)))
    assert scrape(registry) == GuardCounts(rows=4010)


def test_api_bounds() -> None:
    assert UpdateHealth().guard is None
    assert detector_spec(UpdateHealth()).guard_rows is None
    h = UpdateHealth.model_validate({"guard": {"rows": 16}})
    assert detector_spec(h).guard_rows == 16
    for bad in (
        {"rows": 0},
        {},
        {"rows": 4, "stepRatio": 1.0},
        {"rows": 4, "stepRatio": 1e4},
        {"rows": 4, "normRatio": 1.5},
        {"rows": 4, "zeroRatio": 0.2},  # not below the default zeroFrom (0.1)
        {"rows": 4, "zeroRatio": 0.05, "zeroFrom": 0.05},
        {"rows": 4, "warmup": -1},
        {"rows": 4, "warmup": 1.5},
    ):
        with pytest.raises(ValidationError):
            UpdateHealth.model_validate({"guard": bad})


def test_guard_window_takes_the_worst_server_not_the_sum() -> None:
    before = {"a": GuardCounts(100, 0, 1, 0), "b": GuardCounts(100, 0, 0, 0)}
    now = {
        "a": GuardCounts(300, 0, 21, 0),  # 20 zeroed this window
        "b": GuardCounts(300, 0, 18, 1),  # 19 flagged: the same rows, one replica behind
        "c": GuardCounts(50, 0, 2, 0),  # first seen: counts from zero
    }
    assert guard_window(now, before) == GuardCounts(200, 0, 20, 0)
    # A non-finite row outranks any number of flagged ones.
    now["c"] = GuardCounts(60, 1, 2, 0)
    assert guard_window(now, before) == GuardCounts(60, 1, 2, 0)
    # An agent restarted (its rows went down): from zero, never negative.
    assert guard_window({"a": GuardCounts(10, 0, 3, 0)}, before) == GuardCounts(10, 0, 3, 0)
    assert guard_window({}, before) is None


def test_guard_counts_make_the_model_corrupted_and_start_the_rollback() -> None:
    spec = detector_spec(UpdateHealth.model_validate({"guard": {"rows": 16}}))
    state = HealthState(baseline=3)
    control = ModelUpdateControl(baseline_cut=3)
    quiet = observe_servers([("a", None)], control, guard=GuardCounts(500, 0, 15, 0))
    assert decide(spec, state, quiet, 100.0).state.phase == "Healthy"
    harmful = observe_servers([("a", None)], control, guard=GuardCounts(500, 0, 16, 0))
    d = decide(spec, state, harmful, 100.0)
    assert d.state.phase == "Corrupted" and d.state.step == "ServingBaseline"
    assert [c.kind for c in d.commands] == ["ServeBaseline"]
    assert "parameter guard" in d.events[0].message
    # The guard off (no guard in the spec): the same counts change nothing.
    off = detector_spec(UpdateHealth())
    assert decide(off, state, harmful, 100.0).state.phase == "Healthy"
