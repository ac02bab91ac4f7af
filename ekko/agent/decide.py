"""The agent's decisions as pure functions: what to load and unload, which weights to apply,
which version serves a request, what the status says.

Nothing here reads a clock, the API or an engine; observations and time are passed in, so every
decision is table-tested (tests/agent/test_decide.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from ekko.api.meta import Condition
from ekko.api.resources import (
    AssignedShard,
    FailedLoad,
    LoadedShard,
    ModelRouting,
    ServerAssignmentStatus,
    VersionWeight,
)


class ReplicaKey(NamedTuple):
    """One shard replica of one version: what an agent loads and unloads."""

    model: str
    shard: int
    version: str

    def __str__(self) -> str:
        return f"{self.model}/{self.shard}@{self.version}"


def key_of(shard: AssignedShard | LoadedShard) -> ReplicaKey:
    return ReplicaKey(shard.model, shard.shard, shard.version)


def diff(
    assigned: Iterable[AssignedShard], loaded: Collection[ReplicaKey]
) -> tuple[list[AssignedShard], list[ReplicaKey]]:
    """Shards to load (assigned, not loaded; in assignment order, each once) and shards to unload
    (loaded, no longer assigned; sorted)."""
    wanted: set[ReplicaKey] = set()
    to_load: list[AssignedShard] = []
    for shard in assigned:
        key = key_of(shard)
        if key in wanted:
            continue
        wanted.add(key)
        if key not in loaded:
            to_load.append(shard)
    to_unload = sorted(key for key in loaded if key not in wanted)
    return to_load, to_unload


def safe_unloads(to_unload: Iterable[ReplicaKey], failed: Iterable[ReplicaKey]) -> list[ReplicaKey]:
    """The unloads that do not drop a shard whose assigned replacement failed to load.

    The operator only removes an old version after the new one is reported loaded, but if it
    ever does both at once and the new version cannot load, serving the old data beats serving
    nothing: the old replica stays until its replacement loads.
    """
    failing = {(key.model, key.shard) for key in failed}
    return [key for key in to_unload if (key.model, key.shard) not in failing]


def due_unloads(
    unwanted: Iterable[ReplicaKey], since: Mapping[ReplicaKey, float], now: float, grace: float
) -> tuple[list[ReplicaKey], dict[ReplicaKey, float]]:
    """The unwanted replicas whose grace has passed, and when each still-unwanted one became so.

    A replica leaves the assignment when the operator has its replacement ready, or by a hand
    edit or a bad write the operator undoes within a second; waiting ``grace`` seconds before
    unloading keeps the second kind from leaving a shard with nothing serving it."""
    keys = list(unwanted)
    started = {k: since.get(k, now) for k in keys}
    return [k for k in keys if now - started[k] >= grace], started


def backoff_seconds(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Delay before retry number ``attempt`` (1 = first retry) of a failed load: doubling, capped."""
    if attempt < 1:
        return 0.0
    return float(min(cap, base * 2 ** min(attempt - 1, 32)))


# ---------------------------------------------------------------------------------------------
# Routing


def default_weights(versions: Iterable[str]) -> list[VersionWeight]:
    """All traffic on the given versions, split as evenly as whole percents allow (sum 100)."""
    names = sorted(set(versions))
    if not names:
        return []
    share, extra = divmod(100, len(names))
    return [
        VersionWeight(version=name, weight=share + (1 if i < extra else 0))
        for i, name in enumerate(names)
    ]


def held_versions(
    assigned: Iterable[AssignedShard], loaded: Iterable[ReplicaKey]
) -> dict[str, set[str]]:
    """Per model this server holds (assigned or loaded), the versions that serve by default:
    the loaded ones, or the assigned ones while nothing of the model is loaded yet."""
    loaded_by_model: dict[str, set[str]] = {}
    for key in loaded:
        loaded_by_model.setdefault(key.model, set()).add(key.version)
    held: dict[str, set[str]] = {m: set(v) for m, v in loaded_by_model.items()}
    for shard in assigned:
        if shard.model not in loaded_by_model:
            held.setdefault(shard.model, set()).add(shard.version)
    return held


def routing_for(
    held: Mapping[str, Collection[str]], model_weights: Mapping[str, Sequence[VersionWeight]]
) -> list[ModelRouting]:
    """The weights to apply for each held model: the Model's status.weights when it has any,
    otherwise everything on the held versions. Sorted by model."""
    routing = []
    for model in sorted(held):
        weights = list(model_weights.get(model) or ()) or default_weights(held[model])
        routing.append(ModelRouting(model=model, weights=weights))
    return routing


def pick_version(
    weights: Sequence[VersionWeight], loaded_versions: Collection[str], rand: float
) -> str | None:
    """The version that serves a request, chosen by weight among the versions loaded here.

    ``rand`` is uniform in [0, 1). A version that is weighted but not loaded on this server gets
    no traffic here (its share goes to the others); None when no loaded version has weight.
    """
    candidates = [w for w in weights if w.weight > 0 and w.version in loaded_versions]
    total = sum(w.weight for w in candidates)
    if total == 0:
        return None
    target = rand * total
    cumulative = 0
    for w in candidates:
        cumulative += w.weight
        if target < cumulative:
            return w.version
    return candidates[-1].version


# ---------------------------------------------------------------------------------------------
# Fault injection


@dataclass(frozen=True)
class Fault:
    """A fault injected into one version's simulated inference."""

    error_rate: float = 0.0
    extra_latency_ms: float = 0.0


FaultKey = tuple[str | None, str]
"""(model or None for every model, version)."""


def parse_fault(body: Any) -> tuple[FaultKey, Fault]:
    """Parse a /fault request body: {"version": "v2", "errorRate": 0.2, "extraLatencyMs": 50,
    "model": "m" (optional)}. Raises ValueError with a message for the caller."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    unknown = set(body) - {"version", "model", "errorRate", "extraLatencyMs"}
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    version = body.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError("version must be a non-empty string")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ValueError("model must be a non-empty string when given")
    rate = body.get("errorRate", 0.0)
    extra = body.get("extraLatencyMs", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError("errorRate must be a number from 0 to 1")
    if isinstance(extra, bool) or not isinstance(extra, int | float) or not 0.0 <= extra <= 60000:
        raise ValueError("extraLatencyMs must be a number from 0 to 60000")
    return (model, version), Fault(error_rate=float(rate), extra_latency_ms=float(extra))


def find_fault(faults: Mapping[FaultKey, Fault], model: str, version: str) -> Fault | None:
    """The fault for this model's version: one set for the model first, else one for any model."""
    return faults.get((model, version)) or faults.get((None, version))


def fault_outcome(fault: Fault | None, rand: float) -> tuple[bool, float]:
    """(fail the request?, extra latency in ms) for a request, with ``rand`` uniform in [0, 1)."""
    if fault is None:
        return False, 0.0
    return rand < fault.error_rate, fault.extra_latency_ms


# ---------------------------------------------------------------------------------------------
# Status

ReadyReason = Literal["NoAssignment", "LoadFailed", "Loading", "Loaded"]


def ready_condition(
    *,
    seen: bool,
    assigned: int,
    missing: int,
    failed: Mapping[ReplicaKey, str],
    generation: int | None,
    previous: Condition | None,
    now: datetime,
) -> Condition:
    """The Ready condition: True when every assigned shard is loaded.

    ``lastTransitionTime`` moves only when the status flips (Kubernetes convention).
    """
    status: Literal["True", "False"]
    reason: ReadyReason
    if not seen:
        status, reason, message = "False", "NoAssignment", "no ServerAssignment seen yet"
    elif failed:
        first = min(failed)
        status, reason = "False", "LoadFailed"
        message = f"{len(failed)} of {assigned} shards failed to load; {first}: {failed[first]}"
    elif missing:
        status, reason = "False", "Loading"
        message = f"{assigned - missing} of {assigned} shards loaded"
    else:
        status, reason, message = "True", "Loaded", f"all {assigned} assigned shards loaded"
    since = now
    if previous is not None and previous.status == status and previous.last_transition_time:
        since = previous.last_transition_time
    return Condition(
        type="Ready",
        status=status,
        reason=reason,
        message=message[:32768],
        last_transition_time=since,
        observed_generation=generation,
    )


def load_error_message(failed: Mapping[ReplicaKey, str]) -> str:
    """status.message: the load errors, first few by shard, or empty when none."""
    if not failed:
        return ""
    keys = sorted(failed)
    parts = [f"{key}: {failed[key]}" for key in keys[:3]]
    more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
    return ("failed to load " + "; ".join(parts) + more)[:4096]


def build_status(
    *,
    observed_generation: int | None,
    loaded: Mapping[ReplicaKey, int],
    routing: list[ModelRouting],
    failed: Mapping[ReplicaKey, str],
    ready: Condition,
    now: datetime,
) -> ServerAssignmentStatus:
    """The whole status the agent reports (it owns the status subresource)."""
    shards = [
        LoadedShard(model=key.model, shard=key.shard, version=key.version, bytes=size)
        for key, size in sorted(loaded.items())
    ]
    return ServerAssignmentStatus(
        observed_generation=observed_generation,
        loaded=shards,
        shards_loaded=len(shards),
        bytes_loaded=sum(loaded.values()),
        routing=routing,
        heartbeat=now,
        message=load_error_message(failed),
        failed=[
            FailedLoad(model=key.model, shard=key.shard, version=key.version, error=why[:512])
            for key, why in sorted(failed.items())
        ],
        conditions=[ready],
    )


def routing_wire(routing: Iterable[ModelRouting]) -> list[dict[str, Any]]:
    return [r.to_wire() for r in routing]
