"""The placement problem that ServerPool and Model manifests describe, for ``ekko plan -f``."""

from __future__ import annotations

from typing import Any

from ekko.api.resources import Model, ServerPool, parse_resource
from ekko.planning.problem import model_spec, pool_of
from ekko.solver import Problem


def problems_from_manifests(docs: list[dict[str, Any]]) -> list[tuple[str, Problem]]:
    """One problem per ServerPool in the manifests (with the Models that name it), in order."""
    resources = [parse_resource(d) for d in docs if isinstance(d, dict) and d.get("kind")]
    pools = [r for r in resources if isinstance(r, ServerPool)]
    if not pools:
        raise ValueError("no ServerPool in the manifests")
    out = []
    for pool in pools:
        one = [d for d in docs if not (isinstance(d, dict) and d.get("kind") == "ServerPool")]
        out.append((pool.metadata.name, problem_from_manifests([pool.to_wire(), *one])))
    return out


def problem_from_manifests(docs: list[dict[str, Any]]) -> Problem:
    """The problem a set of ServerPool and Model manifests describes (``ekko plan -f``).

    Exactly one ServerPool is expected; Models of other pools are ignored.
    """
    resources = [parse_resource(d) for d in docs if isinstance(d, dict) and d.get("kind")]
    pools = [r for r in resources if isinstance(r, ServerPool)]
    if len(pools) != 1:
        names = ", ".join(p.metadata.name for p in pools) or "none"
        raise ValueError(f"expected exactly one ServerPool in the manifests, found {names}")
    pool = pools[0]
    models = tuple(
        r for r in resources if isinstance(r, Model) and r.spec.pool == pool.metadata.name
    )
    if not models:
        raise ValueError(f"no Model names pool {pool.metadata.name!r}")
    return Problem(pool=pool_of(pool), models=tuple(model_spec(m) for m in models))
