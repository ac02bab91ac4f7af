"""Who pulls parameter updates from whom: the pull topology of an UpdateStream, as a pure function.

Per (model, shard group, region) one **leader** among the ready servers that report a data-plane
address pulls across the WAN: from the stream's source (the publishers) first, from other
regions' leaders of the same group when the source fails. The region's other servers are
**followers**: they pull from the leader, then from a **deputy** (the region's second candidate)
when the leader fails, then from the source. The deputy falls back to the source directly, so
no two followers ever wait on each other.

Leaders are sticky: a leader stays while it is ready and reachable, so a re-plan after an
unrelated change moves nobody. When it goes, the deputy (already holding everything the leader
served) takes over, and only then the next candidate by name.

Groups: with ``keyMapping: Replicated`` every server of the model is in group 0; with ``Modulo``
group ``s`` holds the servers that hold model shard ``s`` (a server in several groups gets one
duty per group). No clock, no API: the operator passes in what it observed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from math import ceil
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families

from ekko.api.meta import Condition, set_condition
from ekko.api.resources import (
    DutyHealth,
    RegionFreshness,
    UpdateDuty,
    UpdateFreshness,
    UpdateState,
    UpdateStream,
    UpdateStreamSpec,
    UpdateStreamStatus,
    UpdateTraffic,
    UpdateUpstream,
)
from ekko.api.units import duration_seconds, parse_quantity, quantity_bytes

GroupRegion = tuple[int, str]

PAUSE_ANNOTATION = "ekko.dev/updates-paused"
"""``"true"`` pauses a stream like ``spec.paused`` (``kubectl ekko updates pause``: an annotation,
so GitOps tools that own the spec do not fight it)."""


def stream_refusal(
    stream: UpdateStream, model_exists: bool, streams: Iterable[UpdateStream]
) -> Condition | None:
    """Why the operator will not wire this stream (None: it will). The webhook refuses both cases
    at admission; with the webhook down (an upgrade, failurePolicy Ignore) they get in, and the
    stream must then say so instead of waiting as Pending for servers that never come.

    Of several streams naming one model, the oldest (then the first by name) is the one: the
    others would wire the same servers twice and fight over their cuts.
    """
    namespace = stream.metadata.namespace or "default"
    model = stream.spec.model
    if not model_exists:
        return Condition(
            type="Connected",
            status="False",
            reason="ModelNotFound",
            message=f'model "{model}" does not exist in namespace "{namespace}"; create it or '
            "name an existing Model in spec.model",
        )
    far = datetime.max  # naive, like every creation time below

    def age_key(s: UpdateStream) -> tuple[datetime, str]:
        created = s.metadata.creation_timestamp
        return (created.replace(tzinfo=None) if created else far), s.metadata.name

    same = [s for s in streams if s.spec.model == model]
    if all(s.metadata.name != stream.metadata.name for s in same):
        same.append(stream)
    owner = min(same, key=age_key)
    if owner.metadata.name == stream.metadata.name:
        return None
    return Condition(
        type="Connected",
        status="False",
        reason="DuplicateStream",
        message=f'model "{model}" already has an UpdateStream ({owner.metadata.name}); one '
        "stream per model: add the tables to that stream and delete this one",
    )


def is_paused(spec: UpdateStreamSpec, annotations: Mapping[str, str]) -> bool:
    """Paused by the spec or by the annotation."""
    return spec.paused or annotations.get(PAUSE_ANNOTATION) == "true"


@dataclass(frozen=True)
class StreamServer:
    """One server holding the model, as the operator observed it."""

    name: str
    region: str
    shards: frozenset[int] = frozenset({0})
    ready: bool = True
    address: str = ""
    """The agent's update URL from ServerAssignment.status; empty when it runs no node yet."""

    @property
    def candidate(self) -> bool:
        """Can others pull from it: ready and reachable."""
        return self.ready and bool(self.address)


@dataclass(frozen=True)
class Topology:
    """The duties of every server of one stream, and the leaders chosen."""

    duties: Mapping[str, tuple[UpdateDuty, ...]]
    leaders: Mapping[GroupRegion, str] = field(default_factory=dict)
    deputies: Mapping[GroupRegion, str] = field(default_factory=dict)

    def leader_changes(self, previous: Mapping[GroupRegion, str]) -> dict[GroupRegion, str]:
        """Groups and regions whose leader differs from ``previous`` (for events)."""
        return {k: v for k, v in self.leaders.items() if previous.get(k) != v}


def groups_of(spec: UpdateStreamSpec, server: StreamServer) -> list[int]:
    """The shard groups a server belongs to under the stream's key mapping."""
    if spec.key_mapping == "Replicated":
        return [0]
    return sorted(server.shards)


def link_rate(spec: UpdateStreamSpec, from_region: str, to_region: str) -> int:
    """Bytes per second of a link (0: uncapped): an override for the region pair, else the
    stream's wan or lan budget."""
    for o in spec.bandwidth.overrides:
        if o.from_region == from_region and o.to_region == to_region:
            return ceil(parse_quantity(o.rate))
    budget = spec.bandwidth.lan if from_region == to_region else spec.bandwidth.wan
    return 0 if budget is None else ceil(parse_quantity(budget))


def previous_leaders(
    assignments: Mapping[str, Iterable[UpdateDuty]], stream: str
) -> dict[GroupRegion, str]:
    """The leaders the current assignments name (what stickiness keeps)."""
    out: dict[GroupRegion, str] = {}
    for server, duties in sorted(assignments.items()):
        for d in duties:
            if d.stream == stream and d.role == "Leader":
                out.setdefault((d.group, d.region), server)
    return out


def previous_deputies(
    assignments: Mapping[str, Iterable[UpdateDuty]], stream: str
) -> dict[GroupRegion, str]:
    """The deputies the current assignments name: a follower's second upstream when it is a
    server (so a restarted operator keeps them, and no follower is re-pointed)."""
    out: dict[GroupRegion, str] = {}
    for _, duties in sorted(assignments.items()):
        for d in duties:
            wired = len(d.upstreams) > 1 and d.upstreams[0].server and d.upstreams[1].server
            if d.stream == stream and d.role == "Follower" and wired:
                out.setdefault((d.group, d.region), d.upstreams[1].server)
    return out


def _choose(
    candidates: list[StreamServer], previous: str | None, deputy: str | None
) -> StreamServer | None:
    by_name = {s.name: s for s in candidates}
    for name in (previous, deputy):
        if name is not None and name in by_name:
            return by_name[name]
    return min(candidates, key=lambda s: s.name) if candidates else None


def plan_topology(
    stream: str,
    spec: UpdateStreamSpec,
    servers: Iterable[StreamServer],
    previous: Mapping[GroupRegion, str] | None = None,
    previous_deputies: Mapping[GroupRegion, str] | None = None,
    *,
    paused: bool | None = None,
    weight: int | None = None,
) -> Topology:
    """Every server's update duties for one stream (see the module docstring); ``paused``
    overrides ``spec.paused`` (see :func:`is_paused`), ``weight`` the model weight in percent
    (default: :func:`fixed_weight`; the operator passes the traffic share)."""
    previous = previous or {}
    previous_deputies = previous_deputies or {}
    members: dict[GroupRegion, list[StreamServer]] = defaultdict(list)
    for s in sorted(servers, key=lambda s: s.name):
        for g in groups_of(spec, s):
            members[(g, s.region)].append(s)

    leaders: dict[GroupRegion, StreamServer] = {}
    deputies: dict[GroupRegion, StreamServer] = {}
    if spec.topology.leader_per_region:
        for key, in_group in members.items():
            candidates = [s for s in in_group if s.candidate]
            leader = _choose(candidates, previous.get(key), previous_deputies.get(key))
            if leader is None:
                continue
            leaders[key] = leader
            rest = [s for s in candidates if s.name != leader.name]
            deputy = _choose(rest, previous_deputies.get(key), None)
            if deputy is not None:
                deputies[key] = deputy

    source_region = spec.source.region

    def up(url: str, server: str, region: str, to_region: str) -> UpdateUpstream:
        rate = link_rate(spec, region, to_region)
        return UpdateUpstream(url=url, server=server, region=region, bandwidth=rate)

    def from_source(region: str) -> list[UpdateUpstream]:
        return [up(url, "", source_region, region) for url in spec.source.endpoints]

    def other_leaders(group: int, region: str) -> list[UpdateUpstream]:
        return [
            up(s.address, s.name, r, region)
            for (g, r), s in sorted(leaders.items())
            if g == group and r != region
        ]

    common = {
        "stream": stream,
        "values": spec.compression.values,
        "codec": spec.compression.codec,
        "policy": spec.priority.policy,
        "high_percentile": spec.priority.high_percentile,
        "idle_pull_seconds": max(
            1, min(300, int(duration_seconds(spec.topology.idle_pull_interval)))
        ),
        "paused": spec.paused if paused is None else paused,
        "weight": fixed_weight(spec) if weight is None else weight,
    }
    if spec.health is not None:
        common["health"] = DutyHealth(
            traffic_percent=spec.health.baseline.traffic_percent,
            shadow_percent=spec.health.baseline.shadow_percent,
            undo_log_bytes=quantity_bytes(spec.health.undo_log_bytes),
            guard=spec.health.guard,
        )
    duties: dict[str, list[UpdateDuty]] = defaultdict(list)
    for group, region in sorted(members):
        group_servers = members[(group, region)]
        leader = leaders.get((group, region))
        deputy = deputies.get((group, region))
        for s in group_servers:
            wan = from_source(region) + other_leaders(group, region)
            if leader is None or s.name == leader.name:
                role = "Leader" if leader is not None else "Follower"
                upstreams = wan
            else:
                role = "Follower"
                upstreams = [up(leader.address, leader.name, region, region)]
                if deputy is not None and s.name != deputy.name:
                    upstreams.append(up(deputy.address, deputy.name, region, region))
                upstreams += from_source(region)
            duties[s.name].append(
                UpdateDuty.model_validate(
                    {
                        **common,
                        "model": spec.model,
                        "region": region,
                        "group": group,
                        "role": role,
                        "upstreams": upstreams[:16],
                    }
                )
            )
    return Topology(
        duties={k: tuple(v) for k, v in duties.items()},
        leaders={k: v.name for k, v in leaders.items()},
        deputies={k: v.name for k, v in deputies.items()},
    )


TRAFFIC_HYSTERESIS = 5
"""A traffic-share weight is rewritten only when it moves by more than this many percent points
(every change re-wires the stream's servers)."""


def fixed_weight(spec: UpdateStreamSpec) -> int:
    """The model weight in percent when it does not follow traffic: ``priority.weight``, else 100."""
    return spec.priority.weight or 100


def traffic_query(models: Iterable[str], window_seconds: int) -> str:
    """The instant query for each model's serving rate over the window, every server summed:
    the agents' requests (``ekko_agent_requests_total``, by version) or, on an ``embedding``
    pool, the (user, item) pairs they scored (``ekko_agent_scores_total``, by view)."""
    names = "|".join(_regex_literal(m) for m in sorted(set(models)))
    sel = f'{{model=~"{names}"}}[{int(window_seconds)}s]'
    return (
        f"sum by (model) (rate(ekko_agent_requests_total{sel}) "
        f"or rate(ekko_agent_scores_total{sel}))"
    )


def traffic_weight(
    model: str,
    rates: Mapping[str, float],
    models: Iterable[str],
    current: int | None,
    hysteresis: int = TRAFFIC_HYSTERESIS,
) -> int:
    """``model``'s weight in percent (1–100): its share of the requests served by ``models``
    (the models with streams that compete for the same servers' budgets). No traffic at all:
    100 (nothing to rank by). ``current`` (what the duties say) is kept while the share stays
    within ``hysteresis`` points of it."""
    names = set(models) | {model}
    total = sum(max(0.0, rates.get(m, 0.0)) for m in names if math.isfinite(rates.get(m, 0.0)))
    if total <= 0:
        share = 100
    else:
        mine = rates.get(model, 0.0)
        mine = mine if math.isfinite(mine) and mine > 0 else 0.0
        share = max(1, min(100, round(100 * mine / total)))
    if current is not None and abs(share - current) <= hysteresis:
        return current
    return share


def replaced_servers(
    uids: Mapping[str, str], remembered: Mapping[str, str], recorded: Mapping[str, str]
) -> set[str]:
    """Servers whose pod is not the one their duties were written for: same name, new UID (the
    pool worker recreates a lost pod within a second, with an empty store), or gone. What this
    operator saw last (``remembered``) comes first, then what the duties recorded (``recorded``,
    which survives a restart of the operator)."""
    out = {n for n, uid in uids.items() if (remembered.get(n) or recorded.get(n) or uid) != uid}
    return out | (set(remembered) - set(uids))


def merge_duties(
    current: Iterable[UpdateDuty], stream: str, mine: Iterable[UpdateDuty]
) -> list[UpdateDuty]:
    """A server's duties with this stream's replaced by ``mine`` (other streams kept, in order)."""
    kept = [d for d in current if d.stream != stream]
    return kept + list(mine)


def path_to_source(topology: Topology, server: str, stream: str) -> bool:
    """Whether following each duty's first upstream from ``server`` reaches the source without
    a cycle (the checker the tests and the operator run on every plan)."""
    by_name = topology.duties
    for duty in by_name.get(server, ()):
        seen = {server}
        current = duty
        while True:
            if not current.upstreams:
                return False
            first = current.upstreams[0]
            if not first.server:
                break  # the source
            if first.server in seen:
                return False
            seen.add(first.server)
            nxt = [
                d
                for d in by_name.get(first.server, ())
                if d.stream == stream and d.group == current.group
            ]
            if not nxt:
                return False
            current = nxt[0]
    return True


# --- status: freshness and traffic from the agents' update metrics ----------------------------

LAG_THRESHOLD_SECONDS = 5.0
"""A server whose lag p99 (or staleness) is above this is lagging; the stream is not Fresh."""
HIGH_CLASSES = ("new", "high")


@dataclass(frozen=True)
class Scrape:
    """One server's update series for one model, as read from its /metrics (cumulative)."""

    lag: Mapping[tuple[str, float], float] = field(default_factory=dict)
    """``(priority class, le)`` → cumulative count of the lag histogram."""
    wire_in: Mapping[str, float] = field(default_factory=dict)
    """peer region → frame bytes pulled from it."""
    raw_in: Mapping[str, float] = field(default_factory=dict)
    rows: float = 0.0
    backlog: float = 0.0
    staleness: float = 0.0
    paired: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Paired shadow scores: (samples, sum of loss differences, sum of their squares)."""
    paired_recent: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The same against the recent view."""


def parse_scrape(text: str, model: str) -> Scrape:
    """The update series of ``model`` in a Prometheus text exposition."""
    lag: dict[tuple[str, float], float] = {}
    wire: dict[str, float] = {}
    raw: dict[str, float] = {}
    rows = backlog = staleness = 0.0
    paired = [0.0, 0.0, 0.0]
    recent = [0.0, 0.0, 0.0]
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "ekko_update_lag_seconds_bucket" and labels.get("model") == model:
                key = (labels.get("priority_class", ""), float(labels["le"]))
                lag[key] = lag.get(key, 0.0) + s.value
            elif s.name == "ekko_update_wire_bytes_total" and labels.get("direction") == "in":
                wire[labels.get("peer_region", "")] = s.value
            elif s.name == "ekko_update_raw_bytes_total" and labels.get("direction") == "in":
                raw[labels.get("peer_region", "")] = s.value
            elif s.name == "ekko_update_rows_applied_total" and labels.get("model") == model:
                rows += s.value
            elif s.name == "ekko_update_backlog_rows":
                backlog += s.value
            elif s.name == "ekko_update_staleness_seconds" and labels.get("model") == model:
                staleness = max(staleness, s.value)
            elif s.name in _PAIRED and labels.get("model") == model:
                paired[_PAIRED[s.name]] = s.value
            elif s.name in _PAIRED_RECENT and labels.get("model") == model:
                recent[_PAIRED_RECENT[s.name]] = s.value
    return Scrape(
        lag,
        wire,
        raw,
        rows,
        backlog,
        staleness,
        (paired[0], paired[1], paired[2]),
        (recent[0], recent[1], recent[2]),
    )


POD_LABEL = "pod"
"""The label that names a server's pod on its scraped series (prometheus-operator's PodMonitor and
the e2e Prometheus both set it)."""

Series = tuple[Mapping[str, str], float]
"""One series of an instant-vector query: its labels and value."""


def prometheus_queries(model: str, pods: Iterable[str], window_seconds: int) -> dict[str, str]:
    """The instant queries that read one stream's update series of these server pods from
    Prometheus: counters as increases over the window, gauges as they are now."""
    names = sorted(set(pods))
    pod = f'{POD_LABEL}=~"{"|".join(_regex_literal(n) for n in names)}"'
    m = f"model={_string_literal(model)}"
    w = f"[{int(window_seconds)}s]"
    return {
        "lag": f"sum by ({POD_LABEL}, priority_class, le) "
        f"(increase(ekko_update_lag_seconds_bucket{{{m},{pod}}}{w}))",
        "wire": f"sum by ({POD_LABEL}, peer_region) "
        f'(increase(ekko_update_wire_bytes_total{{direction="in",{pod}}}{w}))',
        "raw": f"sum by ({POD_LABEL}, peer_region) "
        f'(increase(ekko_update_raw_bytes_total{{direction="in",{pod}}}{w}))',
        "rows": f"sum by ({POD_LABEL}) (increase(ekko_update_rows_applied_total{{{m},{pod}}}{w}))",
        "backlog": f"sum by ({POD_LABEL}) (ekko_update_backlog_rows{{{pod}}})",
        "staleness": f"max by ({POD_LABEL}) (ekko_update_staleness_seconds{{{m},{pod}}})",
    }


def scrapes_from_prometheus(results: Mapping[str, Iterable[Series]]) -> dict[str, Scrape]:
    """Per server pod, what :func:`prometheus_queries` returned as a :class:`Scrape` whose
    counters are the window's increases (so :func:`stream_status` takes them with no baseline).
    A pod Prometheus holds no update series for is absent: it does not count as connected."""
    parts: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"lag": {}, "wire": {}, "raw": {}, "rows": 0.0, "backlog": 0.0, "staleness": 0.0}
    )
    for part, series in results.items():
        for labels, value in series:
            name = labels.get(POD_LABEL)
            if not name or math.isnan(value):
                continue
            p = parts[name]
            if part == "lag":
                key = (labels.get("priority_class", ""), float(labels.get("le", "+Inf")))
                p["lag"][key] = p["lag"].get(key, 0.0) + value
            elif part in ("wire", "raw"):
                region = labels.get("peer_region", "")
                p[part][region] = p[part].get(region, 0.0) + value
            elif part in ("rows", "backlog", "staleness"):
                p[part] = value
    return {
        name: Scrape(p["lag"], p["wire"], p["raw"], p["rows"], p["backlog"], p["staleness"])
        for name, p in parts.items()
    }


def _string_literal(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _regex_literal(value: str) -> str:
    """A name as an exact RE2 match inside a PromQL string (backslashes doubled for the string)."""
    escaped = "".join("\\" + c if not (c.isalnum() or c in "-_") else c for c in value)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


_PAIRED = {
    "ekko_update_paired_samples_total": 0,
    "ekko_update_paired_loss_difference": 1,
    "ekko_update_paired_loss_difference_squared": 2,
}
_PAIRED_RECENT = {
    "ekko_update_paired_recent_samples_total": 0,
    "ekko_update_paired_recent_loss_difference": 1,
    "ekko_update_paired_recent_loss_difference_squared": 2,
}


def _delta(now: Mapping[Any, float], before: Mapping[Any, float] | None) -> dict[Any, float]:
    before = before or {}
    out = {}
    for k, v in now.items():
        d = v - before.get(k, 0.0)
        out[k] = v if d < 0 else d  # a counter reset: the agent restarted
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``le → count`` (None without data)."""
    les = sorted(buckets)
    if not les:
        return None
    total = buckets[les[-1]] if math.isinf(les[-1]) else max(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in les:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return les[-1] if not math.isinf(les[-1]) else prev_le


def _merge(
    into: dict[float, float],
    lag: Mapping[tuple[str, float], float],
    classes: tuple[str, ...] | None,
) -> None:
    for (c, le), v in lag.items():
        if classes is None or c in classes:
            into[le] = into.get(le, 0.0) + v


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def stream_status(
    spec: UpdateStreamSpec,
    *,
    generation: int | None,
    topology: Topology,
    servers: Iterable[StreamServer],
    scrapes: Mapping[str, Scrape],
    baselines: Mapping[str, Scrape],
    window_seconds: float,
    previous: list[Condition],
    now: datetime,
    paused: bool | None = None,
    epoch: int = 0,
    extra: Iterable[Condition | None] = (),
    source: Literal["Prometheus", "Agents"] | None = None,
) -> UpdateStreamStatus:
    """The stream's status from each connected server's metrics now and at the start of the
    window (``baselines``; a server without one counts from zero)."""
    servers = list(servers)
    region_of = {s.name: s.region for s in servers}
    overall: dict[float, float] = {}
    high: dict[float, float] = {}
    per_region: dict[str, dict[float, float]] = defaultdict(dict)
    wan = raw = wire = rows = backlog = 0.0
    lagging = 0
    for name, scrape in scrapes.items():
        base = baselines.get(name)
        lag = _delta(scrape.lag, base.lag if base else None)
        _merge(overall, lag, None)
        _merge(high, lag, HIGH_CLASSES)
        _merge(per_region[region_of.get(name, "")], lag, None)
        wire_d = _delta(scrape.wire_in, base.wire_in if base else None)
        raw_d = _delta(scrape.raw_in, base.raw_in if base else None)
        own = region_of.get(name, "")
        wan += sum(v for peer, v in wire_d.items() if peer != own)
        wire += sum(wire_d.values())
        raw += sum(raw_d.values())
        rows += _delta({0: scrape.rows}, {0: base.rows} if base else None)[0]
        backlog += scrape.backlog
        mine: dict[float, float] = {}
        _merge(mine, lag, None)
        p99 = quantile(0.99, mine)
        if scrape.staleness > LAG_THRESHOLD_SECONDS or (
            p99 is not None and p99 > LAG_THRESHOLD_SECONDS
        ):
            lagging += 1
    window = max(window_seconds, 1e-3)
    wanted = len(servers)
    connected = sum(1 for s in servers if s.address and s.name in scrapes)
    regions = sorted({s.region for s in servers})
    p99 = quantile(0.99, overall)
    if spec.paused if paused is None else paused:
        state: UpdateState = "Paused"
    elif connected == 0:
        state = "Pending"
    elif lagging or connected < wanted:
        state = "Degraded"
    else:
        state = "Streaming"
    conditions = set_condition(
        previous,
        Condition(
            type="Connected",
            status="True" if wanted and connected == wanted else "False",
            reason="AllConnected" if wanted and connected == wanted else "ServersNotConnected",
            message=f"{connected} of {wanted} servers report an update node",
        ),
        now,
    )
    if p99 is None and not lagging:
        fresh = Condition(
            type="Fresh", status="Unknown", reason="NoRecentRows", message="no rows applied lately"
        )
    else:
        ok = lagging == 0 and (p99 is None or p99 <= LAG_THRESHOLD_SECONDS)
        fresh = Condition(
            type="Fresh",
            status="True" if ok else "False",
            reason="LagWithinThreshold" if ok else "LagOverThreshold",
            message=f"lag p99 {p99 if p99 is None else round(p99, 3)}s, {lagging} servers lagging (threshold {LAG_THRESHOLD_SECONDS}s)",
        )
    conditions = set_condition(conditions, fresh, now)
    for condition in extra:  # the health manager's, the traffic share's, a refusal
        if condition is not None:
            conditions = set_condition(conditions, condition, now)
    return UpdateStreamStatus(
        observed_generation=generation,
        state=state,
        epoch=epoch,
        freshness=UpdateFreshness(
            p50_seconds=_round(quantile(0.5, overall)),
            p99_seconds=_round(p99),
            high_p99_seconds=_round(quantile(0.99, high)),
            regions=[
                RegionFreshness(
                    region=r,
                    leader=next(
                        (n for (_, rr), n in sorted(topology.leaders.items()) if rr == r), ""
                    ),
                    servers=sum(1 for s in servers if s.region == r),
                    lag_p50_seconds=_round(quantile(0.5, per_region.get(r, {}))),
                    lag_p99_seconds=_round(quantile(0.99, per_region.get(r, {}))),
                )
                for r in regions
            ],
            source=source,
        ),
        traffic=UpdateTraffic(
            wan_bytes_per_second=round(wan / window),
            raw_bytes_per_second=round(raw / window),
            compression_ratio=round(raw / wire, 2) if wire > 0 else None,
            rows_per_second=round(rows / window, 2),
        ),
        backlog_rows=round(backlog),
        servers_wanted=wanted,
        servers_connected=connected,
        servers_lagging=lagging,
        conditions=conditions,
    )
