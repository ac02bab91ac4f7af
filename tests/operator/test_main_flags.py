"""`ekko operator`'s flags: what reaches the workers, and a bad value stops at the command line."""

from __future__ import annotations

import json

import pytest

from ekko.operator import main as operator_main


def test_a_header_without_a_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        operator_main.main(["--prometheus-header", "X-Scope-OrgID"])
    assert stop.value.code == 2
    assert "--prometheus-header wants NAME=VALUE, got 'X-Scope-OrgID'" in capsys.readouterr().err


def test_prometheus_flags_reach_the_workers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "HEADERS", "TOKEN_FILE", "CA_FILE", "ALLOW"):
        monkeypatch.delenv(f"EKKO_PROMETHEUS_{name}", raising=False)
    args = operator_main._parser().parse_args(
        [
            "--prometheus-url", "http://prom:9090",
            "--prometheus-header", "X-Scope-OrgID=team-a",
            "--prometheus-header", "X-Extra= a=b ",
            "--prometheus-bearer-token-file", "/var/run/token",
            "--allow-prometheus-address", "http://a:9090",
            "--allow-prometheus-address", "http://b:9090",
        ]
    )  # fmt: skip
    operator_main._prometheus_environment(args)
    import os

    assert os.environ["EKKO_PROMETHEUS_URL"] == "http://prom:9090"
    assert json.loads(os.environ["EKKO_PROMETHEUS_HEADERS"]) == {
        "X-Scope-OrgID": "team-a",
        "X-Extra": " a=b ",
    }
    assert os.environ["EKKO_PROMETHEUS_TOKEN_FILE"] == "/var/run/token"
    assert "EKKO_PROMETHEUS_CA_FILE" not in os.environ
    assert os.environ["EKKO_PROMETHEUS_ALLOW"] == "http://a:9090,http://b:9090"


def test_auto_priority_ranks_the_earlier_start_higher() -> None:
    first = operator_main._priority("auto")
    second = operator_main._priority("auto")
    assert first >= second and 0 < second < 2**53
    with pytest.raises(Exception, match="neither a whole number nor 'auto'"):
        operator_main._priority("high")
