"""Existing servers follow a template edit: replace outdated servers make-before-break.

A server whose pod was made from an older template (its ``ekko.dev/template-hash`` label differs
from what the pool's template renders now) is *outdated*. The roll never unloads anything
itself: it rewrites the desired placement and lets ``converge`` do what it does for any re-plan.

- A server with shards is replaced by a new server (a fresh name, see ``replacement_prefix``;
  the same zone, so spreading holds) that takes over its shards in the desired placement. The old one is then a server the
  placement no longer uses: converge keeps its shards, marked drain, until every replica the
  placement wants is loaded and served elsewhere, and deletes it once it holds nothing. So no
  shard goes below its ready replicas, and each replacement needs one extra server meanwhile.
- A server with nothing placed on it (kept by ``minServers``) is recreated in place.

Pace: at most ``spec.updateStrategy.maxSurge`` replacements are in flight; one is in flight
from the moment it starts until the old pod is going away (or, for a recreated empty server,
until the new pod is ready). A replacement never takes the pool past ``maxServers``: at the cap
the roll waits and says why. ``OnDelete`` replaces nothing (status still counts outdated pods).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ekko.api.meta import Condition, set_condition
from ekko.planning.converge import Desired, RecreateServer
from ekko.planning.state import PoolState, ShardKey


@dataclass(frozen=True)
class Roll:
    """What one pass of the roll decided, and where the roll stands."""

    desired: Desired
    """The desired placement with this pass's replacements in it."""
    replaced: tuple[tuple[str, str], ...] = ()
    """(outdated server, its new server) started this pass."""
    recreate: tuple[RecreateServer, ...] = ()
    """Empty outdated servers whose pods are deleted this pass (converge creates them again)."""
    updated: int = 0
    """Live servers made from the current template."""
    outdated: tuple[str, ...] = ()
    """Live servers made from an older template."""
    in_flight: int = 0
    """Replacements under way (this pass's included)."""
    on_delete: bool = False
    """The pool's updateStrategy is OnDelete: nothing is replaced."""
    waiting: str = ""
    """Why outdated servers wait although the pace allows more ("" when they do not)."""

    @property
    def done(self) -> bool:
        return not self.outdated and self.in_flight == 0


def roll(state: PoolState, desired: Desired) -> Roll:
    """The desired placement with the next outdated servers replaced, within the pace."""
    live = [s for s in state.servers if s.alive]
    outdated = [s for s in live if state.outdated(s)]
    strategy = state.pool.spec.update_strategy
    spec = state.pool.spec
    # Empty outdated servers that converge keeps (minServers spares) are recreated in place;
    # the other empty ones it deletes anyway.
    spare_slots = max(0, spec.min_servers - len(desired.servers))
    spares = sorted(
        s.name for s in outdated if s.name not in desired.servers and not s.spec_shards
    )[:spare_slots]
    # In flight: outdated servers the placement has left (draining, then deleted), and servers
    # put back in the placement empty (recreated in place) until they serve the new template.
    leaving = [s for s in outdated if s.name not in desired.servers and s.name not in spares]
    recreating = [n for n, t in desired.servers.items() if not t and not _current(state, n)]
    in_flight = len(leaving) + len(recreating)
    base = Roll(
        desired,
        updated=len(live) - len(outdated),
        outdated=tuple(s.name for s in outdated),
        in_flight=in_flight,
        on_delete=strategy.type == "OnDelete",
    )
    candidates = sorted(
        (s for s in outdated if desired.servers.get(s.name)),
        key=lambda s: (s.serving, s.name),  # what serves nothing first: replacing it costs nothing
    )
    if base.on_delete or not (candidates or spares):
        return base
    budget = strategy.max_surge - in_flight
    servers: dict[str, frozenset[ShardKey]] = dict(desired.servers)
    zones = dict(desired.zones)
    zone_of = {s.name: s.zone for s in outdated}
    recreate: list[RecreateServer] = []
    for name in spares[: max(0, budget)]:
        servers[name] = frozenset()
        zones[name] = zone_of[name]
        recreate.append(RecreateServer(name))
    budget -= len(recreate)
    taken = {s.name for s in state.servers} | set(servers)
    occupied = len(
        {s.name for s in state.servers if s.pod_exists and not s.deleting} | set(servers)
    )
    replaced: list[tuple[str, str]] = []
    waiting = ""
    index = 0
    prefix = replacement_prefix(state)
    for server in candidates[: max(0, budget)]:
        if occupied + 1 > spec.max_servers:
            waiting = (
                f"the pool has {occupied} of maxServers {spec.max_servers} servers and replacing "
                "an outdated server needs one more while its shards move; raise maxServers "
                f"(by updateStrategy.maxSurge, {strategy.max_surge}) to let the roll go on"
            )
            break
        while f"{prefix}{index}" in taken:
            index += 1
        new = f"{prefix}{index}"
        taken.add(new)
        servers[new] = servers.pop(server.name)
        zones[new] = zones.pop(server.name, "") or server.zone
        replaced.append((server.name, new))
        occupied += 1
    if not replaced and not recreate:
        return replace(base, waiting=waiting)
    return replace(
        base,
        desired=Desired(servers=servers, zones=zones),
        replaced=tuple(replaced),
        recreate=tuple(recreate),
        in_flight=in_flight + len(replaced) + len(recreate),
        waiting=waiting,
    )


def replacement_prefix(state: PoolState) -> str:
    """Replacements are named ``<pool>-<first 5 of the template hash>-<n>``, never the name of
    a server just deleted: an agent of the old pod (still stopping, or force-deleted) would
    otherwise report into the new server's assignment of the same name, and its replicas would
    count as loaded there. Names stay within a label value's 63 characters; a pool whose name
    leaves no room falls back to ``<pool>-<n>``."""
    prefix = f"{state.name}-{state.template_hash[:5]}-"
    return prefix if len(prefix) + 4 <= 63 else f"{state.name}-"


def _current(state: PoolState, name: str) -> bool:
    """The server serves, from a pod of the current template."""
    server = state.server(name)
    return server is not None and server.serving and not state.outdated(server)


def roll_status(
    roll_: Roll,
    conditions: list[dict[str, Any]],
    generation: int | None,
    template_hash: str,
    now: datetime,
) -> dict[str, Any]:
    """The template-roll part of a pool's status: counts, the hash, TemplateRolledOut."""
    if roll_.done:
        cond = Condition(
            type="TemplateRolledOut",
            status="True",
            reason="Updated",
            message=f"{roll_.updated} server(s) run the current template",
            observed_generation=generation,
        )
    else:
        names = ", ".join(roll_.outdated[:5]) + (" …" if len(roll_.outdated) > 5 else "")
        message = f"{len(roll_.outdated)} outdated, {roll_.updated} updated"
        message += f" ({names})" if names else ""
        reason = "Rolling"
        if roll_.on_delete:
            reason = "OnDelete"
            message += "; updateStrategy OnDelete: delete a server pod to replace it"
        elif roll_.waiting:
            reason, message = "WaitingForSurge", f"{message}; {roll_.waiting}"
        cond = Condition(
            type="TemplateRolledOut",
            status="False",
            reason=reason,
            message=message[:4000],
            observed_generation=generation,
        )
    parsed = [Condition.model_validate(c) for c in conditions]
    return {
        "templateHash": template_hash,
        "updatedServers": roll_.updated,
        "outdatedServers": len(roll_.outdated),
        "conditions": [c.to_wire() for c in set_condition(parsed, cond, now)],
    }
