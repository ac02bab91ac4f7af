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
