"""The problem file format of ``ekko plan -f`` and the plan YAML it writes.

A problem file is one YAML document (keys in camelCase, sizes as Kubernetes quantities)::

    pool:
      name: cpu-a
      memory: 64Gi            # per server; 68719476736 or "64Gi", "500M", ...
      compute: 1000           # compute units per server (QPS, cores, ...)
      headroom: 0.1           # optional, default 0.1
      maxServers: 20
      maxShardsPerServer: 500 # optional; default and most: what a ServerAssignment lists (20000)
      zones: [a, b, c]        # optional; replicas of a shard spread over them
      servers:                # optional: servers that exist now
        - {id: cpu-a-0, zone: a}
    sloClasses:               # optional; default critical/standard/batch
      - {name: critical, utilisationCap: 0.6, exclusiveWith: [batch]}
      - {name: standard, utilisationCap: 0.8}
      - {name: batch, utilisationCap: 1.0, exclusiveWith: [critical]}
    models:
      - id: ranking
        shards: 16            # count of equal shards ...
        shardSize: 20Gi       # ... of this size; or shardSizes: [10Gi, 12Gi, ...]
        shardLoads: [..]      # optional per-shard load per replica
        replicas: 2
        load: 120             # compute units per shard replica
        slo: critical
        reserveFactor: 0.25   # optional: memory kept for previous version and canary
        reserveBytes: 0       # optional
        versionsHeld: 1       # optional: versions per replica a server lists (see maxShardsPerServer)
    current:                  # optional: model -> shards -> servers holding a replica
      ranking:
        - [cpu-a-0, cpu-a-1]
"""

from __future__ import annotations

import math
from typing import Any

from ekko.api.resources import MAX_ASSIGNED_SHARDS
from ekko.api.units import UnitError, quantity_bytes
from ekko.solver.types import (
    DEFAULT_SLO_CLASSES,
    ModelId,
    ModelSpec,
    Plan,
    Pool,
    Problem,
    Server,
    ServerId,
    SloClass,
    SloClassName,
    ZoneId,
)


class ProblemFormatError(ValueError):
    """The problem file is malformed; the message says where."""


def parse_bytes(value: Any, where: str) -> int:
    """A Kubernetes quantity ("64Gi", "500M", 1024) in whole bytes (``api.units``, the one
    quantity parser; a fraction of a byte rounds up)."""
    wrong = ProblemFormatError(f"{where}: expected a size such as 64Gi, got {value!r}")
    if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        raise wrong
    if not isinstance(value, str | int | float):
        raise wrong
    try:
        return quantity_bytes(value)
    except UnitError:
        raise wrong from None


def number(value: Any, where: str) -> float:
    """A finite number (int or float; YAML's .inf and .nan are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProblemFormatError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ProblemFormatError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def whole(value: Any, where: str) -> int:
    """A whole number (2 or 2.0; 2.7, 'three' and .inf are refused, never truncated)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProblemFormatError(f"{where}: expected a whole number, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value == int(value)):
        raise ProblemFormatError(f"{where}: expected a whole number, got {value!r}")
    return int(value)


def _get(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ProblemFormatError(f"{where}: missing required key {key!r}")
    return d[key]


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ProblemFormatError(f"{where}: expected a mapping, got {type(v).__name__}")
    return v


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise ProblemFormatError(f"{where}: expected a list, got {type(v).__name__}")
    return v


def _known(d: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(d) - keys)
    if unknown:
        raise ProblemFormatError(f"{where}: unknown key(s) {', '.join(unknown)}")


def problem_from_dict(doc: Any) -> Problem:
    """Parse the problem document; raises ProblemFormatError with a located message."""
    doc = _mapping(doc, "problem")
    _known(doc, {"pool", "models", "sloClasses", "current"}, "problem")
    try:
        return _parse(doc)
    except ProblemFormatError:
        raise
    except (ValueError, TypeError) as e:  # pydantic.ValidationError is a ValueError
        raise ProblemFormatError(_short(e)) from None


def _short(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        parts = []
        for err in errors():
            loc = ".".join(str(x) for x in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return "; ".join(parts)
    return str(e)


def _parse(doc: dict[str, Any]) -> Problem:
    p = _mapping(_get(doc, "pool", "problem"), "pool")
    _known(
        p,
        {
            "name",
            "memory",
            "compute",
            "headroom",
            "maxServers",
            "maxShardsPerServer",
            "zones",
            "servers",
        },
        "pool",
    )
    servers = []
    for i, raw in enumerate(_list(p.get("servers", []), "pool.servers")):
        s = _mapping(raw, f"pool.servers[{i}]")
        _known(s, {"id", "zone"}, f"pool.servers[{i}]")
        servers.append(
            Server(
                id=ServerId(str(_get(s, "id", f"pool.servers[{i}]"))),
                zone=ZoneId(str(s.get("zone", ""))),
            )
        )
    pool = Pool(
        name=str(_get(p, "name", "pool")),
        memory_bytes=parse_bytes(_get(p, "memory", "pool"), "pool.memory"),
        compute_units=number(_get(p, "compute", "pool"), "pool.compute"),
        headroom=number(p.get("headroom", 0.1), "pool.headroom"),
        max_servers=whole(_get(p, "maxServers", "pool"), "pool.maxServers"),
        max_shards_per_server=whole(
            p.get("maxShardsPerServer", MAX_ASSIGNED_SHARDS), "pool.maxShardsPerServer"
        ),
        zones=tuple(ZoneId(str(z)) for z in _list(p.get("zones", []), "pool.zones")),
        servers=tuple(servers),
    )
    classes = DEFAULT_SLO_CLASSES
    if "sloClasses" in doc:
        parsed = []
        for i, raw in enumerate(_list(doc["sloClasses"], "sloClasses")):
            c = _mapping(raw, f"sloClasses[{i}]")
            _known(c, {"name", "utilisationCap", "exclusiveWith"}, f"sloClasses[{i}]")
            parsed.append(
                SloClass(
                    name=SloClassName(str(_get(c, "name", f"sloClasses[{i}]"))),
                    utilisation_cap=number(
                        c.get("utilisationCap", 1.0), f"sloClasses[{i}].utilisationCap"
                    ),
                    exclusive_with=tuple(
                        SloClassName(str(x))
                        for x in _list(c.get("exclusiveWith", []), f"sloClasses[{i}].exclusiveWith")
                    ),
                )
            )
        classes = tuple(parsed)
    models = []
    keys = {
        "id", "shards", "shardSize", "shardSizes", "shardLoads", "replicas", "load", "slo",
        "reserveFactor", "reserveBytes", "versionsHeld",
    }  # fmt: skip
    for i, raw in enumerate(_list(_get(doc, "models", "problem"), "models")):
        where = f"models[{i}]"
        m = _mapping(raw, where)
        _known(m, keys, where)
        sizes = None
        if "shardSizes" in m:
            sizes = tuple(
                parse_bytes(x, f"{where}.shardSizes[{k}]")
                for k, x in enumerate(_list(m["shardSizes"], f"{where}.shardSizes"))
            )
        loads = None
        if "shardLoads" in m:
            loads = tuple(
                number(x, f"{where}.shardLoads[{k}]")
                for k, x in enumerate(_list(m["shardLoads"], f"{where}.shardLoads"))
            )
        models.append(
            ModelSpec(
                id=ModelId(str(_get(m, "id", where))),
                shard_count=whole(m["shards"], f"{where}.shards") if "shards" in m else None,
                shard_bytes=parse_bytes(m["shardSize"], f"{where}.shardSize")
                if "shardSize" in m
                else None,
                shard_sizes=sizes,
                shard_loads=loads,
                replicas=whole(m.get("replicas", 1), f"{where}.replicas"),
                load=number(m.get("load", 0.0), f"{where}.load"),
                slo=SloClassName(str(m.get("slo", "standard"))),
                reserve_factor=number(m.get("reserveFactor", 0.0), f"{where}.reserveFactor"),
                reserve_bytes=parse_bytes(m.get("reserveBytes", 0), f"{where}.reserveBytes"),
                versions_held=whole(m.get("versionsHeld", 1), f"{where}.versionsHeld"),
            )
        )
    current: dict[ModelId, tuple[tuple[ServerId, ...], ...]] = {}
    for mid, shards in _mapping(doc.get("current", {}) or {}, "current").items():
        rows = _list(shards, f"current.{mid}")
        current[ModelId(str(mid))] = tuple(
            tuple(ServerId(str(s)) for s in _list(r, f"current.{mid}[{k}]"))
            for k, r in enumerate(rows)
        )
    return Problem(pool=pool, models=tuple(models), slo_classes=classes, current=current)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain data for YAML (the format ``ekko plan -o`` writes)."""
    new = set(plan.new_servers)
    return {
        "solver": plan.solver,
        "status": plan.status,
        "serversUsed": plan.servers_used,
        "lowerBound": plan.lower_bound,
        "gap": round(plan.gap, 6) if plan.gap != float("inf") else None,
        "objective": round(plan.objective, 6) if plan.objective != float("inf") else None,
        "solveSeconds": round(plan.solve_seconds, 3),
        "bytesMoved": plan.bytes_moved,
        "replicasMoved": plan.replicas_moved,
        "explanation": list(plan.explanation),
        "notes": list(plan.notes),
        "servers": [{"id": s.id, "zone": s.zone, "new": s.id in new} for s in plan.servers],
        "assignment": {
            str(m): [list(shard) for shard in shards] for m, shards in plan.assignment.items()
        },
    }
