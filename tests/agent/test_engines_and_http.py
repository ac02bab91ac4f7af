"""Engine adapters (real files and a loopback HTTP server), the agent's HTTP endpoints and CLI."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ekko.agent import engines
from ekko.agent.decide import Fault, ReplicaKey
from ekko.agent.engines import LoadError, ReferenceEngine, SimEngine
from ekko.agent.main import parse_args, parse_listen
from ekko.agent.metrics import AgentMetrics
from ekko.agent.runtime import Agent, StatusWriter
from ekko.agent.server import make_app
from ekko.api.resources import AssignedShard, VersionWeight

T = TypeVar("T")


def run(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro())


def shard(uri: str, index: int = 0, size: int = 5) -> AssignedShard:
    return AssignedShard(model="m", shard=index, version="v1", uri=uri, bytes=size)


@pytest.mark.parametrize(
    ("uri", "index", "expected"),
    [
        ("file:///data/m/v1", 3, "file:///data/m/v1/shard-3"),
        ("file:///data/m/v1/", 0, "file:///data/m/v1/shard-0"),
        ("https://h/a", 12, "https://h/a/shard-12"),
    ],
)
def test_shard_location(uri: str, index: int, expected: str) -> None:
    assert engines.shard_location(uri, index) == expected


def test_check_shard_size() -> None:
    # Only the size is checked: AssignedShard carries no digest (artifact.digest is recorded,
    # not verified; the test that injected a digest field production lacks is gone).
    data = b"hello"
    s = shard("file:///x")
    engines.check_shard(s, 5, hashlib.sha256(data).hexdigest())
    with pytest.raises(LoadError, match="size mismatch"):
        engines.check_shard(s, 4, "")


def test_reference_engine_loads_files(tmp_path: Path) -> None:
    (tmp_path / "shard-0").write_bytes(b"hello")
    (tmp_path / "shard-1").write_bytes(b"hello world")

    async def scenario() -> None:
        engine = ReferenceEngine(infer_latency_ms=0, artifact_root=tmp_path)
        assert await engine.load(shard(tmp_path.as_uri(), 0)) == 5
        with pytest.raises(LoadError, match="size mismatch"):
            await engine.load(shard(tmp_path.as_uri(), 1))
        with pytest.raises(LoadError, match="cannot read"):
            await engine.load(shard(tmp_path.as_uri(), 2))
        with pytest.raises(LoadError, match="not s3://"):
            await engine.load(shard("s3://bucket/m", 0))
        await engine.infer("m", "v1")
        await engine.unload(ReplicaKey("m", 0, "v1"))
        await engine.unload(ReplicaKey("m", 0, "v1"))  # twice is fine

    run(scenario)


def test_file_artifacts_are_confined_to_the_artifact_root(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    (root / "m").mkdir(parents=True)
    (root / "m" / "shard-0").write_bytes(b"hello")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "shard-0").write_bytes(b"hello")
    (root / "link").symlink_to(tmp_path / "secret")

    async def scenario() -> None:
        engine = ReferenceEngine(infer_latency_ms=0, artifact_root=root)
        assert await engine.load(shard((root / "m").as_uri(), 0)) == 5
        for outside in (
            (tmp_path / "secret").as_uri(),  # another directory
            (root / "m").as_uri() + "/../../secret",  # climbing out with ..
            (root / "link").as_uri(),  # a symlink pointing out
        ):
            with pytest.raises(LoadError, match="outside the artifact root"):
                await engine.load(shard(outside, 0))

    run(scenario)


def test_reference_engine_loads_over_http() -> None:
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "shard-0":
            return web.Response(body=b"abcde")
        return web.Response(status=404)

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/m/{name}", handler)
        async with TestServer(app, host="127.0.0.1") as server:
            base = str(server.make_url("/m"))
            engine = ReferenceEngine()
            assert await engine.load(shard(base, 0)) == 5
            with pytest.raises(LoadError, match="HTTP 404"):
                await engine.load(shard(base, 1))
            with pytest.raises(LoadError, match="failed"):
                await engine.load(shard("http://127.0.0.1:1/none", 0))

    run(scenario)


def test_sim_engine_takes_bytes_over_bandwidth() -> None:
    async def scenario() -> None:
        engine = SimEngine(bandwidth=1000.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await engine.load(shard("file:///x", 0, size=50))
        assert 0.04 <= loop.time() - started < 0.5

    run(scenario)


def _agent() -> Agent:
    async def patch(body: dict[str, Any]) -> None:
        return None

    metrics = AgentMetrics()
    return Agent(
        SimEngine(bandwidth=1e12, infer_latency_ms=0), StatusWriter(patch, metrics), metrics
    )


def test_http_endpoints() -> None:
    async def scenario() -> None:
        agent = _agent()
        async with TestClient(TestServer(make_app(agent, enable_fault_injection=True))) as http:
            assert (await http.get("/healthz")).status == 200
            assert (await http.get("/readyz")).status == 503
            agent.on_assignment(
                "ADDED",
                {
                    "metadata": {"name": "s", "generation": 1},
                    "spec": {"pool": "p", "server": "s", "shards": []},
                },
            )
            assert (await http.get("/readyz")).status == 200
            agent.loaded[ReplicaKey("m", 0, "v1")] = 10
            agent.loaded[ReplicaKey("m", 0, "v2")] = 10
            agent.routing["m"] = [
                VersionWeight(version="v1", weight=0),
                VersionWeight(version="v2", weight=100),
            ]
            resp = await http.get("/infer", params={"model": "m"})
            assert resp.status == 200
            body = await resp.json()
            assert body["model"] == "m" and body["version"] == "v2" and "latency_ms" in body
            assert (await http.get("/infer")).status == 400
            assert (await http.get("/infer", params={"model": "x"})).status == 503

            resp = await http.post("/fault", json={"version": "v2", "errorRate": 1.0})
            assert resp.status == 200
            assert await resp.json() == [{"version": "v2", "errorRate": 1.0, "extraLatencyMs": 0.0}]
            resp = await http.get("/infer", params={"model": "m"})
            assert resp.status == 500
            assert (await resp.json())["version"] == "v2"
            assert (await http.post("/fault", json={"version": "v2", "errorRate": 2})).status == 400
            assert (await http.post("/fault", data=b"not json")).status == 400
            assert await (await http.delete("/fault")).json() == []
            assert (await http.get("/infer", params={"model": "m"})).status == 200

            text = await (await http.get("/metrics")).text()
            assert 'ekko_agent_requests_total{model="m",version="v2"} 3.0' in text
            assert 'ekko_agent_request_errors_total{model="m",version="v2"} 1.0' in text
            for name in (
                "ekko_agent_shards_loaded",
                "ekko_agent_bytes_loaded",
                "ekko_agent_load_seconds",
                "ekko_agent_request_seconds",
                "ekko_agent_routing_applied_seconds",
            ):
                assert name in text

    run(scenario)


def test_fault_endpoint_is_opt_in() -> None:
    async def scenario() -> None:
        async with TestClient(TestServer(make_app(_agent()))) as http:
            assert (await http.post("/fault", json={"version": "v1"})).status in (404, 405)

    run(scenario)


def test_cli_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "srv-0")
    monkeypatch.setenv("POD_NAMESPACE", "ns")
    config = parse_args(["--engine", "sim", "--sim-bandwidth", "1Gi", "--listen", "127.0.0.1:0"])
    assert (config.pod_name, config.namespace, config.engine) == ("srv-0", "ns", "sim")
    assert config.sim_bandwidth == 2**30
    assert (config.host, config.port) == ("127.0.0.1", 0)
    assert config.heartbeat_seconds == 10
    assert not config.enable_fault_injection
    config = parse_args(["--pod-name", "other", "--namespace", "n2"])
    assert (config.pod_name, config.namespace) == ("other", "n2")


@pytest.mark.parametrize(
    "argv",
    [
        ["--sim-bandwidth", "lots"],
        ["--listen", "nohost"],
        ["--heartbeat-seconds", "0"],
        ["--engine", "triton"],
        ["--fault", '{"version": "v3", "errorRate": 0.2}'],  # without --enable-fault-injection
        ["--enable-fault-injection", "--fault", '{"version": "v3", "errorRate": 2}'],
        ["--enable-fault-injection", "--fault", "v3"],
    ],
)
def test_cli_rejects(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "srv-0")
    monkeypatch.setenv("POD_NAMESPACE", "ns")
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def test_cli_faults_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "srv-0")
    monkeypatch.setenv("POD_NAMESPACE", "ns")
    config = parse_args(
        [
            "--enable-fault-injection",
            "--fault",
            '{"version": "v3", "errorRate": 0.2}',
            "--fault",
            '{"model": "m", "version": "v4", "extraLatencyMs": 50}',
        ]
    )
    assert dict(config.faults) == {
        (None, "v3"): Fault(error_rate=0.2),
        ("m", "v4"): Fault(extra_latency_ms=50.0),
    }


def test_cli_needs_pod_and_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    with pytest.raises(SystemExit):
        parse_args([])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9400", ("127.0.0.1", 9400)), (":80", ("0.0.0.0", 80)), ("[::1]:1", ("::1", 1))],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected
