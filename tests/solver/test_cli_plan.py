"""`ekko plan`: summary and plan file on good input, exit code 2 and one line on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ekko.cli.plan import main, parse_duration
from ekko.solver.io import ProblemFormatError, parse_bytes, problem_from_dict

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "problems" / "small.yaml"


def test_example_plans_and_writes_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.yaml"
    png = tmp_path / "plan.png"
    rc = main(["-f", str(EXAMPLE), "-o", str(out), "--time-limit", "1s", "--plot", str(png)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "servers used:" in text and "checker: ok" in text
    plan = yaml.safe_load(out.read_text())
    assert plan["status"] in ("optimal", "feasible", "fallback")
    assert set(plan["assignment"]) == {"ranking", "embeddings", "retrieval", "offline-scoring"}
    assert png.stat().st_size > 1000


def test_baseline_solver_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(EXAMPLE), "--solver", "ffd"]) == 0
    assert "by ffd" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("pool: [1, 2\n", "not valid YAML"),
        ("models: []\n", "missing required key 'pool'"),
        (
            "pool: {name: p, memory: lots, compute: 1, maxServers: 1}\nmodels: []\n",
            "pool.memory",
        ),
        (
            "pool: {name: p, memory: 1Gi, compute: 1, maxServers: 1}\n"
            "models: [{id: m, shards: 1}]\n",
            "shard_count and shard_bytes",
        ),
        ("pool: {name: p, memory: 1Gi, compute: 1, maxServers: 1, colour: red}\n", "colour"),
    ],
)
def test_bad_input_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, needle: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    assert main(["-f", str(f)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_missing_file_and_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", "/nonexistent.yaml"]) == 2
    assert main(["-f", str(EXAMPLE), "--time-limit", "soon"]) == 2
    assert main(["--solver", "nope", "-f", str(EXAMPLE)]) == 2
    capsys.readouterr()


def test_infeasible_problem_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "big.yaml"
    f.write_text(
        "pool: {name: cpu-a, memory: 64Gi, compute: 100, maxServers: 4}\n"
        "models: [{id: ranking, shards: 20, shardSize: 80Gi}]\n"
    )
    assert main(["-f", str(f)]) == 1
    assert "shard ranking/0 needs 80 GiB" in capsys.readouterr().out


def test_quantities_and_durations() -> None:
    assert parse_bytes("64Gi", "x") == 64 * 1024**3
    assert parse_bytes("1.5G", "x") == 1_500_000_000
    assert parse_bytes(12, "x") == 12
    with pytest.raises(ProblemFormatError):
        parse_bytes("12 parsecs", "x")
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert parse_duration("3") == 3


def test_problem_round_trip_of_example() -> None:
    pr = problem_from_dict(yaml.safe_load(EXAMPLE.read_text()))
    assert pr.pool.max_servers == 16
    assert [m.num_shards for m in pr.models] == [8, 12, 4, 6]


def test_durations_as_the_crd_takes_them() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2") == 2


MANIFESTS = Path(__file__).resolve().parents[2] / "examples"


def test_several_files_and_pools_plan_per_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plans.yaml"
    rc = main(
        [
            "-f", str(MANIFESTS / "serverpools.yaml"),
            "-f", str(MANIFESTS / "models.yaml"),
            "--solver", "ffd", "-o", str(out), "--rows", "0",
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "== pool gpu-a100" in text and "== pool cpu-large" in text
    assert len(list(yaml.safe_load_all(out.read_text()))) == 2


@pytest.mark.parametrize(
    ("flags", "module"), [(["--plot", "x.png"], "matplotlib"), (["--backend", "highs"], "highspy")]
)
def test_a_missing_optional_package_is_refused_before_solving(
    flags: list[str],
    module: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    assert main(["-f", str(EXAMPLE), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{module} is not installed" in err


@pytest.mark.parametrize(
    ("pool_line", "model_line", "field"),
    [
        ("compute: .inf", "replicas: 1", "pool.compute"),
        ("compute: 100", "reserveFactor: .inf", "models[0].reserveFactor"),
        ("compute: 100", "replicas: 2.7", "models[0].replicas"),
        ("compute: 100", "replicas: three", "models[0].replicas"),
        ("compute: 100", "load: .nan", "models[0].load"),
    ],
)
def test_non_finite_and_fractional_values_exit_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pool_line: str, model_line: str, field: str
) -> None:
    # Issue 17, bug 5: these crashed solve (exit 1 with a traceback) or were truncated.
    f = tmp_path / "bad.yaml"
    f.write_text(
        f"pool: {{name: p, memory: 64Gi, {pool_line}, maxServers: 4}}\n"
        f"models: [{{id: m, shards: 2, shardSize: 1Gi, {model_line}}}]\n"
    )
    assert main(["-f", str(f)]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_problem_sizes_use_the_one_kubernetes_quantity_parser() -> None:
    from ekko.solver.io import ProblemFormatError, parse_bytes

    assert parse_bytes("64Gi", "pool.memory") == 64 * 2**30
    assert parse_bytes("500M", "x") == 500 * 10**6
    assert parse_bytes("1.5Ki", "x") == 1536
    assert parse_bytes(1024, "x") == 1024
    assert parse_bytes("1e3", "x") == 1000  # as the API server reads it
    for bad in ("1K", " 64Gi", -1, float("inf"), float("nan"), True, None, "lots"):
        with pytest.raises(ProblemFormatError, match=r"pool\.memory: expected a size"):
            parse_bytes(bad, "pool.memory")
