"""`kubectl ekko updates MODEL`: the table and the json/yaml documents of a stream's status."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from ekko.api.resources import UpdateStream
from ekko.cli.kubectl_ekko import Session, main, parse_args, render_updates, run_updates
from ekko.cli.rolloutview import RefusedError

STREAM: dict[str, Any] = {
    "apiVersion": "ekko.dev/v1alpha1",
    "kind": "UpdateStream",
    "metadata": {"name": "ranker-stream", "namespace": "default"},
    "spec": {
        "model": "ranker",
        "source": {"endpoints": ["http://trainer:9500"], "region": "train"},
        "tables": [{"name": "ranker.user", "dim": 17}],
    },
    "status": {
        "state": "Streaming",
        "freshness": {
            "p50Seconds": 0.018,
            "p99Seconds": 0.075,
            "highP99Seconds": 0.05,
            "regions": [
                {"region": "zone-a", "leader": "pool-0", "servers": 2, "lagP99Seconds": 0.075},
                {"region": "zone-b", "leader": "pool-2", "servers": 1},
            ],
        },
        "traffic": {"wanBytesPerSecond": 9525, "rawBytesPerSecond": 7000, "compressionRatio": 0.76},
        "serversWanted": 3,
        "serversConnected": 3,
        "conditions": [{"type": "Fresh", "status": "True", "reason": "LagWithinThreshold"}],
    },
}


def test_table() -> None:
    text = render_updates(UpdateStream.model_validate(STREAM))
    assert "UpdateStream ranker-stream (model ranker): Streaming, epoch 0" in text
    assert "p50 0.018s  p99 0.075s  high-priority p99 0.050s" in text
    assert "WAN 9.3 KiB/s" in text and "compression 0.76x" in text
    assert "3/3 connected, 0 lagging" in text
    assert "zone-a  pool-0  2        -        0.075s" in text
    assert "Fresh=True (LagWithinThreshold)" in text


def test_no_status_yet() -> None:
    bare = {k: v for k, v in STREAM.items() if k != "status"}
    text = render_updates(UpdateStream.model_validate(bare))
    assert "Pending" in text and "p99 -" in text


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_documents_and_refusal(output: str) -> None:
    out = io.StringIO()
    session = Session(kube=None, namespace="default", out=out)
    args = parse_args(["updates", "ranker", "-o", output])
    stream = UpdateStream.model_validate(STREAM)
    assert run_updates(session, args, lambda ns, model: stream) == 0
    if output == "json":
        assert json.loads(out.getvalue())["status"]["freshness"]["p99Seconds"] == 0.075
    else:
        assert "p99Seconds: 0.075" in out.getvalue()
    with pytest.raises(RefusedError, match="no UpdateStream for model"):
        run_updates(session, args, lambda ns, model: None)


def test_help_lists_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "updates" in capsys.readouterr().out


@pytest.mark.parametrize(("verb", "paused"), [("pause", True), ("resume", False)])
def test_pause_and_resume_set_the_annotation(verb: str, paused: bool) -> None:
    out = io.StringIO()
    session = Session(kube=None, namespace="default", out=out)
    calls: list[tuple[str, str, bool]] = []
    stream = UpdateStream.model_validate(STREAM)
    args = parse_args(["updates", verb, "ranker"])
    assert (args.action, args.model) == (verb, "ranker")
    assert run_updates(session, args, lambda ns, m: stream, lambda *a: calls.append(a)) == 0
    assert calls == [("default", "ranker-stream", paused)]
    assert verb + "d" in out.getvalue()


def test_bad_words_are_a_usage_error() -> None:
    assert main(["updates", "a", "b", "c"]) == 2


HEALTHY: dict[str, Any] = {
    **STREAM,
    "metadata": {**STREAM["metadata"], "annotations": {}},
    "spec": {**STREAM["spec"], "health": {}},
    "status": {
        **STREAM["status"],
        "health": {
            "phase": "Healthy",
            "baselineCut": 4,
            "cuts": [
                {"id": 4, "takenAt": "2026-11-29T10:00:00Z"},
                {"id": 5, "takenAt": "2026-11-29T10:00:30Z"},
            ],
        },
    },
}


class FakeKube:
    """The plugin's client calls, recorded; servers switch when the control block says so."""

    def __init__(self) -> None:
        self.model_status: dict[str, Any] = {"updates": {"baselineCut": 4}}
        self.patches: list[dict[str, Any]] = []

    def get_model(self, namespace: str, name: str) -> Any:
        from ekko.api.resources import Model

        return Model.model_validate(
            {
                "apiVersion": "ekko.dev/v1alpha1",
                "kind": "Model",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "pool": "pool",
                    "version": "v1",
                    "artifact": {"uri": "file:///artifacts/ranker/v1"},
                    "shards": {"count": 1, "size": "1Gi", "load": "5"},
                    "replicas": 1,
                },
                "status": self.model_status,
            }
        )

    def patch_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append(status)
        self.model_status = {**self.model_status, **status}

    def model_servers(self, namespace: str, model: str, pool: str) -> list[Any]:
        from ekko.api.resources import ServerAssignment

        view = self.model_status["updates"].get("view", "Live")
        out = []
        for name, cuts in (("s0", [4, 5]), ("s1", [5])):  # s1 never held cut 4
            a = ServerAssignment.model_validate(
                {
                    "apiVersion": "ekko.dev/v1alpha1",
                    "kind": "ServerAssignment",
                    "metadata": {"name": name},
                    "spec": {"pool": "pool", "server": name},
                    "status": {"updates": [{"model": model, "view": view, "cuts": cuts}]},
                }
            )
            out.append((a, True))
        return out


def test_state_rollback_serves_the_cut_and_asks_the_operator() -> None:
    out = io.StringIO()
    kube = FakeKube()
    session = Session(kube=kube, namespace="default", out=out, sleep=lambda s: None)
    annotations: list[dict[str, str]] = []
    stream = UpdateStream.model_validate(HEALTHY)
    args = parse_args(["updates", "rollback", "ranker", "--wait", "--timeout", "1s"])
    assert (
        run_updates(
            session, args, lambda ns, m: stream, None, lambda ns, n, a: annotations.append(a)
        )
        == 0
    )
    assert kube.patches == [{"updates": {"epoch": 0, "baselineCut": 4, "view": "Baseline"}}]
    (asked,) = annotations
    assert asked["ekko.dev/updates-rollback-to"] == "4"
    text = out.getvalue()
    assert "every server serves cut 4" in text
    assert "has not restored the state yet" in text  # no operator record in this fake


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--to-cut", "2"], "cut 2 is not retained"),
    ],
)
def test_state_rollback_refusals(argv: list[str], error: str) -> None:
    session = Session(kube=FakeKube(), namespace="default", out=io.StringIO())
    stream = UpdateStream.model_validate(HEALTHY)
    args = parse_args(["updates", "rollback", "ranker", *argv])
    with pytest.raises(RefusedError, match=error):
        run_updates(session, args, lambda ns, m: stream, None, lambda *a: None)
    plain = UpdateStream.model_validate(STREAM)
    with pytest.raises(RefusedError, match=r"no spec\.health"):
        run_updates(
            session,
            parse_args(["updates", "rollback", "ranker"]),
            lambda ns, m: plain,
            None,
            lambda *a: None,
        )
    assert main(["updates", "ranker", "--to-cut", "3"]) == 2
