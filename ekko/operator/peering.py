"""The workers' side of kopf peering: ask before every pass whether this operator may act."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from ekko.kube.fleet import Fleet
from ekko.planning.peering import may_act

PEERING_NAME = "ekko"
CACHE_SECONDS = 1.0


class Gate:
    """Reads the peering object (cached for a second) and applies :func:`may_act`."""

    def __init__(
        self, fleet: Fleet, identity: str, priority: int, clusterwide: bool, enabled: bool
    ) -> None:
        self.fleet = fleet
        self.identity = identity
        self.priority = priority
        self.clusterwide = clusterwide
        self.enabled = enabled
        self._cache: dict[str | None, tuple[float, bool]] = {}

    async def allowed(self, namespace: str) -> bool:
        if not self.enabled:
            return True
        key = None if self.clusterwide else namespace
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        peers = await asyncio.to_thread(self.fleet.peering_status, PEERING_NAME, key)
        verdict = may_act(peers, self.identity, self.priority, dt.datetime.now(dt.UTC))
        self._cache[key] = (time.monotonic(), verdict)
        return verdict
