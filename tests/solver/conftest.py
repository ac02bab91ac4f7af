"""Shared builders for solver tests."""

from __future__ import annotations

from ekko.solver import GIB, ModelId, ModelSpec, Pool, Problem, SloClassName, ZoneId


def pool(max_servers: int = 20, zones: tuple[str, ...] = ("a", "b", "c"), **kw: object) -> Pool:
    args: dict[str, object] = {
        "name": "p",
        "memory_bytes": 64 * GIB,
        "compute_units": 100.0,
        "headroom": 0.1,
        "max_servers": max_servers,
        "zones": tuple(ZoneId(z) for z in zones),
    }
    args.update(kw)
    return Pool.model_validate(args)


def model(
    mid: str,
    shards: int,
    gib: float,
    replicas: int = 1,
    load: float = 1.0,
    slo: str = "standard",
    **kw: object,
) -> ModelSpec:
    return ModelSpec(
        id=ModelId(mid),
        shard_count=shards,
        shard_bytes=int(gib * GIB),
        replicas=replicas,
        load=load,
        slo=SloClassName(slo),
        **kw,  # type: ignore[arg-type]
    )


def small_problem() -> Problem:
    return Problem(
        pool=pool(),
        models=(
            model("rank", 6, 10, replicas=2, load=10, slo="critical"),
            model("emb", 12, 5, replicas=3, load=3),
            model("off", 3, 7, replicas=1, load=20, slo="batch"),
        ),
    )
