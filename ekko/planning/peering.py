"""Whether this operator may act, judged from kopf's peering object (pure).

kopf pauses its own event handling when a peer of higher (or equal) priority is alive, but Ekko's
pool and rollout workers run on their own: they ask this before every pass, with the same rules,
so a paused operator also stops writing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ekko.api.units import parse_time


def may_act(peers: Mapping[str, Any] | None, me: str, priority: int, now: dt.datetime) -> bool:
    """True unless another live peer has a higher priority, or the same one (kopf pauses all)."""
    for identity, info in (peers or {}).items():
        if identity == me or not isinstance(info, Mapping):
            continue
        seen = parse_time(str(info.get("lastseen")), naive_as_utc=True)
        if seen is None:
            continue  # no readable time: not a live peer
        try:
            alive = seen + dt.timedelta(seconds=int(info.get("lifetime", 60))) > now
            other = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if alive and other >= priority:
            return False
    return True
