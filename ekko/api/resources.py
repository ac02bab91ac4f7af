"""Ekko's custom resources: ServerPool, Model, ModelVersion and ServerAssignment.

These pydantic models are the API. ``make crds`` turns them into ``crds/*.yaml`` (see
:mod:`ekko.api.crdgen`); every field's description becomes ``kubectl explain`` text. Cross-field
rules are CEL rules on the CRD with a Python twin here (``__cel__``), so a manifest is judged the
same way by the API server and offline.
"""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from ekko.api.conditions import CONDITION_PATTERN
from ekko.api.meta import (
    ApiModel,
    Conditions,
    EmbeddedObject,
    Name,
    Resource,
)
from ekko.api.schema import CelRule, ListSchema
from ekko.api.units import Duration, Quantity, duration_range, quantity_range

MAX_SHARD_BYTES = 16 * 2**40
"""No single shard may exceed 16 TiB: larger values are almost always a unit mistake (16Ti vs 16Gi)."""
MAX_SHARD_QUANTITY = "16Ti"

# Every number a user writes has bounds, in the CRD and in the Python twin alike, so that what
# the API server admits the planner and the rollout can always use (no zero capacity, no float
# that overflows or underflows to zero, no timer that spins or never fires).
ServerMemory = Annotated[Quantity, quantity_range("1", "1Pi", "64Gi")]
ServerCompute = Annotated[Quantity, quantity_range("1m", "1G", "100 or 500m")]
ShardSize = Annotated[Quantity, quantity_range("1", MAX_SHARD_QUANTITY, "8Gi")]
ShardLoad = Annotated[Quantity, quantity_range("0", "1G", "1 or 500m")]
ContainerQuantity = Annotated[Quantity, quantity_range("0", "1Ei", "500m or 64Gi")]
MAX_QPS = 10**9

SloClass = Literal["critical", "standard", "batch"]
Phase = Literal[
    "Pending", "Loading", "Progressing", "Paused", "Promoted", "Aborted", "RolledBack", "Failed"
]
NoDataPolicy = Literal["Hold", "Fail", "Pass"]

# ---------------------------------------------------------------------------------------------
# ServerPool


class ContainerResources(ApiModel):
    """Resource requests and limits of the inference server container."""

    requests: dict[str, ContainerQuantity] = Field(
        default_factory=dict,
        max_length=32,
        description="Resources the scheduler reserves for each server pod (cpu, memory, nvidia.com/gpu).",
    )
    limits: dict[str, ContainerQuantity] = Field(
        default_factory=dict,
        max_length=32,
        description="Upper limits for each server pod's container.",
    )


class EnvVar(ApiModel):
    """An environment variable of the inference server container."""

    name: str = Field(min_length=1, max_length=253, description="Name of the variable.")
    value: str = Field(default="", max_length=4096, description="Value of the variable.")


class ServerTemplate(ApiModel):
    """The pod that runs one inference server and its Ekko agent sidecar."""

    image: str = Field(
        min_length=1, max_length=512, description="Image of the inference engine container."
    )
    engine: Literal["reference", "sim"] = Field(
        default="reference",
        description="Engine adapter the agent uses: reference (loads shard files and checks their size) or sim (simulated loads, for tests and demos).",
    )
    args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=64, description="Arguments of the engine container."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="Environment of the engine container."
    )
    resources: ContainerResources = Field(
        default_factory=ContainerResources,
        description="Requests and limits of the engine container; size them to the node type.",
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, description="Labels a node must have to run this pool's servers."
    )
    tolerations: list[EmbeddedObject] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations of the server pods, as in a Pod spec.",
    )
    agent_image: str | None = Field(
        default=None,
        max_length=512,
        description="Image of the Ekko agent sidecar; defaults to the operator's image.",
    )
    service_account_name: str | None = Field(
        default=None, max_length=253, description="Service account of the server pods."
    )


class ServerCapacity(ApiModel):
    """What one server of the pool can hold for model shards."""

    memory: ServerMemory = Field(
        description="Memory for model shards on one server (for example 64Gi or 80Gi of GPU memory); from 1 byte to 1Pi."
    )
    compute: ServerCompute = Field(
        description="Compute units one server serves (QPS, or CPU cores); shards' load uses the same unit. From 1m to 1G."
    )


class PlacementPolicy(ApiModel):
    """How the optimiser places shards on this pool."""

    solver_time_limit: Annotated[Duration, duration_range("100ms", "5m")] = Field(
        default="10s",
        description="Deadline of one placement solve, from 100ms to 5m; the best plan found is used.",
    )
    migration_cost_weight: float = Field(
        default=0.5,
        ge=0,
        le=100,
        description="Cost, in servers, of moving one server's worth of shard bytes on a re-plan; higher values move less.",
    )
    headroom_percent: int = Field(
        default=10,
        ge=0,
        le=90,
        description="Percent of each server's memory and compute kept free.",
    )
    replan_debounce: Annotated[Duration, duration_range("0s", "1m")] = Field(
        default="2s",
        description="Changes arriving within this window are planned together; at most 1m.",
    )


class ServerPoolSpec(ApiModel):
    """A fleet of identical inference servers."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.minServers <= self.maxServers",
            message="minServers must not exceed maxServers",
            check=lambda s: s.min_servers <= s.max_servers,
        ),
    )

    template: ServerTemplate = Field(description="The server pod: engine image and resources.")
    capacity: ServerCapacity = Field(description="Per-server capacity available to model shards.")
    min_servers: int = Field(
        default=0, ge=0, le=10000, description="Servers kept running even when empty."
    )
    max_servers: int = Field(
        ge=1, le=10000, description="Most servers the optimiser may use; a plan needing more fails."
    )
    topology_key: str = Field(
        default="topology.kubernetes.io/zone",
        max_length=253,
        description="Node label whose values are the failure domains replicas spread over.",
    )
    zones: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list,
        max_length=32,
        description="Values of topologyKey to use; empty means every value found on nodes.",
    )
    placement: PlacementPolicy = Field(
        default_factory=PlacementPolicy, description="Optimiser settings for this pool."
    )


class PlanSummary(ApiModel):
    """The last placement plan the operator computed for the pool."""

    status: Literal["Optimal", "Feasible", "Fallback", "Infeasible"] = Field(
        description="Optimal, Feasible (deadline hit), Fallback (greedy or current) or Infeasible."
    )
    servers_used: int = Field(ge=0, description="Servers the plan uses.")
    lower_bound: int = Field(ge=0, description="Proven lower bound on servers needed.")
    gap_percent: float = Field(ge=0, description="Percent the plan is above the lower bound.")
    solve_seconds: float = Field(ge=0, description="Wall time of the solve.")
    bytes_moved: int = Field(ge=0, description="Bytes of shards the plan loads anew.")
    replicas_moved: int = Field(ge=0, description="Shard replicas the plan moves.")
    computed_at: datetime | None = Field(default=None, description="When the plan was computed.")
    explanation: str = Field(
        default="", max_length=4096, description="Why the plan is infeasible, in plain words."
    )
    inputs: str = Field(
        default="",
        max_length=128,
        description="Fingerprint of the pool and model specs the plan was made from; a restarted operator re-plans only when it changes.",
    )
    excluded_models: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list,
        max_length=256,
        description="Models left out of the plan because they cannot be placed on this pool at all.",
    )


class ServerPoolStatus(ApiModel):
    """Observed state of a ServerPool."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation this status describes."
    )
    servers_wanted: int = Field(default=0, description="Servers the current plan needs.")
    servers_ready: int = Field(default=0, description="Servers whose agent reports ready.")
    plan: PlanSummary | None = Field(default=None, description="Summary of the last plan.")
    conditions: Conditions = Field(default_factory=list)


class ServerPool(Resource):
    """A fleet of identical inference servers that Ekko fills with model shards."""

    kind: Literal["ServerPool"] = "ServerPool"
    spec: ServerPoolSpec = Field(description="Desired fleet.")
    status: ServerPoolStatus | None = Field(default=None, description="Observed fleet.")


# ---------------------------------------------------------------------------------------------
# Model


class ShardItem(ApiModel):
    """One shard given explicitly, for models whose shards differ in size or load."""

    size: ShardSize = Field(
        description="Bytes of memory the shard needs on a server, from 1 to 16Ti."
    )
    load: ShardLoad | None = Field(
        default=None,
        description="Compute units one replica of this shard takes, at most 1G; defaults to shards.load.",
    )


class Shards(ApiModel):
    """How the model is cut into shards: count × size, or an explicit list."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.items) != (has(self.count) && has(self.size))",
            message="give either count and size, or items, but not both",
            check=lambda s: (s.items is not None) != (s.count is not None and s.size is not None),
        ),
    )

    count: int | None = Field(default=None, ge=1, le=100000, description="Number of equal shards.")
    size: ShardSize | None = Field(
        default=None, description="Memory of each shard (with count), from 1 to 16Ti."
    )
    load: ShardLoad = Field(
        default=1,
        description="Compute units one replica of one shard takes (QPS or cores), at most 1G.",
    )
    items: list[ShardItem] | None = Field(
        default=None, max_length=1024, description="Explicit shards, instead of count and size."
    )


class Slo(ApiModel):
    """Service level objective of the model; sets co-location rules and utilisation caps."""

    slo_class: SloClass = Field(
        default="standard",
        alias="class",
        description="critical (kept apart from batch, capped utilisation), standard or batch.",
    )
    latency_p99: Annotated[Duration, duration_range("1ms", "1h")] | None = Field(
        default=None,
        description="Target 99th percentile latency, for analysis and reports; from 1ms to 1h.",
    )
    qps: int | None = Field(
        default=None, ge=0, le=MAX_QPS, description="Expected queries per second."
    )


class ModelSpec(ApiModel):
    """A model served from a ServerPool."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.minReadyReplicas) || self.minReadyReplicas <= self.replicas",
            message="minReadyReplicas must not exceed replicas",
            check=lambda s: s.min_ready_replicas is None or s.min_ready_replicas <= s.replicas,
        ),
    )

    pool: Name = Field(description="Name of the ServerPool (same namespace) that serves the model.")
    version: Name = Field(description="Name of the version served before any ModelVersion rollout.")
    artifact: Artifact = Field(description="Where the initial version's shards are loaded from.")
    shards: Shards = Field(description="How the model is cut into shards.")
    replicas: int = Field(
        default=1, ge=1, le=100, description="Copies of every shard, on distinct servers."
    )
    min_ready_replicas: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Ready copies a shard keeps during migrations; defaults to replicas.",
    )
    slo: Slo = Field(default_factory=Slo, description="Service level objective.")
    spread_zones: bool = Field(
        default=True, description="Spread each shard's replicas over the pool's zones."
    )
    keep_previous_resident: bool = Field(
        default=True,
        description="Reserve memory so the previous version stays loaded during rollouts (instant rollback).",
    )


class VersionWeight(ApiModel):
    """Share of the model's traffic routed to one version."""

    version: str = Field(max_length=63, description="Version name.")
    weight: int = Field(ge=0, le=100, description="Percent of traffic.")


class ModelStatus(ApiModel):
    """Observed state of a Model."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation this status describes."
    )
    stable_version: str | None = Field(
        default=None, max_length=63, description="Version serving by default."
    )
    canary_version: str | None = Field(
        default=None, max_length=63, description="Version under rollout, if any."
    )
    previous_version: str | None = Field(
        default=None,
        max_length=63,
        description="Previous stable version kept loaded for instant rollback, if any.",
    )
    canary_weight: int = Field(
        default=0, ge=0, le=100, description="Percent of traffic on the canary."
    )
    weights: list[VersionWeight] = Field(
        default_factory=list,
        max_length=8,
        description="Routing weights; every agent holding the model watches and applies them.",
    )
    replicas_wanted: int = Field(default=0, description="Shard replicas the model needs.")
    replicas_placed: int = Field(default=0, description="Shard replicas assigned to servers.")
    replicas_ready: int = Field(default=0, description="Shard replicas agents report loaded.")
    ready: str = Field(
        default="", max_length=32, description="Ready over wanted replicas, for kubectl get."
    )
    conditions: Conditions = Field(default_factory=list)


class Model(Resource):
    """A model whose shards Ekko places on a ServerPool."""

    kind: Literal["Model"] = "Model"
    spec: ModelSpec = Field(description="Desired model.")
    status: ModelStatus | None = Field(default=None, description="Observed model.")


# ---------------------------------------------------------------------------------------------
# ModelVersion


class Artifact(ApiModel):
    """Where a version's shards come from."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^(file|https?|s3|gs|pvc)://.+$",
        description="Location of the shards: file://, http(s)://, s3://, gs:// or pvc:// URI.",
    )
    digest: str | None = Field(
        default=None,
        max_length=71,
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="sha256:<hex> digest of the artifact manifest, checked by the agent.",
    )


class Pause(ApiModel):
    """Wait before the next step: for a duration, or until promoted."""

    duration: Annotated[Duration, duration_range("0s", "720h")] | None = Field(
        default=None,
        description="How long to wait, at most 720h; without it the rollout waits for promote.",
    )


class AnalysisStep(ApiModel):
    """Run analysis metrics and wait for their verdict before the next step."""

    metrics: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list,
        max_length=10,
        description="Names of spec.analysis.metrics to run; empty runs all.",
    )
    duration: Annotated[Duration, duration_range("1s", "720h")] | None = Field(
        default=None,
        description="How long to analyse, from 1s to 720h; defaults to count × interval.",
    )


class CanaryStep(ApiModel):
    """One canary step: exactly one of setWeight, pause or analysis."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="[has(self.setWeight), has(self.pause), has(self.analysis)].filter(x, x).size() == 1",
            message="each step sets exactly one of setWeight, pause or analysis",
            check=lambda s: (
                [s.set_weight is not None, s.pause is not None, s.analysis is not None].count(True)
                == 1
            ),
        ),
    )

    set_weight: int | None = Field(
        default=None, ge=0, le=100, description="Percent of traffic to send to the new version."
    )
    pause: Pause | None = Field(default=None, description="Wait before the next step.")
    analysis: AnalysisStep | None = Field(default=None, description="Gate on analysis metrics.")


class Canary(ApiModel):
    """Canary strategy: steps that move traffic to the new version."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
            message="setWeight values must not decrease from one step to the next",
            check=lambda c: _non_decreasing(
                [s.set_weight for s in c.steps if s.set_weight is not None]
            ),
        ),
    )

    steps: list[CanaryStep] = Field(
        min_length=1,
        max_length=50,
        description="Steps run in order; the last one ends at promotion.",
    )


class Strategy(ApiModel):
    """How the version is rolled out."""

    canary: Canary = Field(description="Canary steps.")


class PrometheusProvider(ApiModel):
    """Where to run a PromQL query."""

    address: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://.+$",
        description="Prometheus base URL; defaults to the operator's --prometheus-url.",
    )


class AnalysisMetric(ApiModel):
    """A metric whose value decides whether the canary is healthy."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.successCondition) || has(self.failureCondition)",
            message="give a successCondition, a failureCondition or both",
            check=lambda m: m.success_condition is not None or m.failure_condition is not None,
        ),
    )

    name: Name = Field(description="Name of the metric, unique in the version.")
    query: str = Field(
        min_length=1,
        max_length=4096,
        description="PromQL query; {{version}} and {{model}} are replaced before it runs.",
    )
    success_condition: str | None = Field(
        default=None,
        max_length=256,
        pattern=CONDITION_PATTERN,
        description="Condition on the query result that passes, for example 'result < 0.05': result, a comparison (<, <=, >, >=, ==, !=) and a decimal number (-1, 0.05, 2.5e-3).",
    )
    failure_condition: str | None = Field(
        default=None,
        max_length=256,
        pattern=CONDITION_PATTERN,
        description="Condition on the query result that fails, for example 'result >= 0.05'; same grammar as successCondition.",
    )
    interval: Annotated[Duration, duration_range("1s", "24h")] = Field(
        default="30s", description="Time between measurements, from 1s to 24h."
    )
    count: int | None = Field(
        default=None, ge=1, le=10000, description="Measurements to take; unlimited when unset."
    )
    failure_limit: int = Field(
        default=0, ge=0, le=1000, description="Failed measurements tolerated before rollback."
    )
    inconclusive_limit: int = Field(
        default=0, ge=0, le=1000, description="Inconclusive measurements tolerated before pausing."
    )
    consecutive_error_limit: int = Field(
        default=4, ge=0, le=1000, description="Query errors in a row tolerated before rollback."
    )
    no_data: NoDataPolicy = Field(
        description="What an empty query result means: Hold (keep measuring until data arrives; after noDataTimeout without any, each empty result is inconclusive), Fail (a failed measurement) or Pass (a successful one)."
    )
    no_data_timeout: Annotated[Duration, duration_range("0s", "24h")] = Field(
        default="2m",
        description="With noData Hold: how long an analysis step waits for its first data before empty results count as inconclusive (which pauses the rollout once inconclusiveLimit is passed); at most 24h.",
    )
    prometheus: PrometheusProvider = Field(
        default_factory=PrometheusProvider, description="Prometheus to query."
    )


class ModelVersionSpec(ApiModel):
    """One version of a Model and how to roll it out."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            # Written without filter(): the API server's cost estimate for filter() inside nested
            # comprehensions exceeds its budget by over 100x; all() with a guard does not.
            rule=(
                "!has(self.strategy) || self.strategy.canary.steps.all(s, !has(s.analysis) || "
                "!has(s.analysis.metrics) || "
                "s.analysis.metrics.all(n, has(self.analysis) && n in self.analysis.map(m, m.name)))"
            ),
            message="an analysis step names a metric that spec.analysis does not define",
            check=lambda s: (
                s.strategy is None
                or all(
                    name in {m.name for m in s.analysis}
                    for step in s.strategy.canary.steps
                    if step.analysis is not None
                    for name in step.analysis.metrics
                )
            ),
        ),
        CelRule(
            rule=(
                "!has(self.strategy) || !self.strategy.canary.steps.exists(s, has(s.analysis))"
                " || (has(self.analysis) && self.analysis.size() > 0)"
            ),
            message="an analysis step needs at least one metric in spec.analysis",
            check=lambda s: (
                s.strategy is None
                or not any(step.analysis is not None for step in s.strategy.canary.steps)
                or len(s.analysis) > 0
            ),
        ),
    )

    model: Name = Field(description="Name of the Model (same namespace) this is a version of.")
    version: Name = Field(description="Version name, shown in routing and metrics.")
    artifact: Artifact = Field(description="Where this version's shards are loaded from.")
    strategy: Strategy | None = Field(
        default=None,
        description="Rollout strategy; without it the version is promoted once loaded.",
    )
    analysis: list[AnalysisMetric] = Field(
        default_factory=list, max_length=10, description="Metrics that analysis steps evaluate."
    )
    keep_previous: Literal["UntilNextVersion", "Never"] = Field(
        default="UntilNextVersion",
        description="After promotion keep the previous version loaded for instant rollback, or unload it.",
    )


class AnalysisResult(ApiModel):
    """Tally of one analysis metric."""

    metric: str = Field(max_length=63, description="Metric name.")
    phase: Literal["Running", "Successful", "Failed", "Inconclusive", "Error"] = Field(
        description="Verdict so far."
    )
    successful: int = Field(default=0, description="Measurements that passed.")
    failed: int = Field(default=0, description="Measurements that failed.")
    inconclusive: int = Field(default=0, description="Measurements with no verdict.")
    errors: int = Field(default=0, description="Queries that errored.")
    consecutive_errors: int = Field(default=0, description="Queries that errored in a row.")
    no_data: int = Field(
        default=0, description="Empty results held while waiting for data (noData Hold)."
    )
    last_value: str | None = Field(default=None, max_length=64, description="Last query result.")
    last_measured: datetime | None = Field(
        default=None, description="Time of the last measurement."
    )


class ModelVersionStatus(ApiModel):
    """Observed state of a ModelVersion rollout."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation this status describes."
    )
    phase: Phase = Field(default="Pending", description="Where the rollout is.")
    current_step: int = Field(default=0, ge=0, description="Index of the step being run.")
    weight: int = Field(default=0, ge=0, le=100, description="Percent of traffic on this version.")
    servers_loaded: int = Field(default=0, description="Servers whose agent loaded this version.")
    servers_wanted: int = Field(default=0, description="Servers that must load this version.")
    analysis: list[AnalysisResult] = Field(
        default_factory=list, max_length=10, description="Analysis tallies."
    )
    step_started_at: datetime | None = Field(default=None, description="When the step began.")
    rollback_requested_at: datetime | None = Field(
        default=None, description="When a rollback was requested or decided."
    )
    rollback_completed_at: datetime | None = Field(
        default=None, description="When every agent reported the rollback applied."
    )
    rollback_seconds: float | None = Field(
        default=None, description="Measured rollback time, request to every agent applied."
    )
    message: str = Field(default="", max_length=4096, description="Why the rollout is where it is.")
    handled_request: str = Field(
        default="",
        max_length=128,
        description="The last request (ekko.dev/request-at annotation) the operator acted on.",
    )
    paused_by_user: bool = Field(default=False, description="Paused by a pause request.")
    started_at: datetime | None = Field(default=None, description="When the rollout started.")
    finished_at: datetime | None = Field(
        default=None,
        description="When the rollout reached Promoted, Aborted, RolledBack or Failed.",
    )
    conditions: Conditions = Field(default_factory=list)


class ModelVersion(Resource):
    """A version of a Model, rolled out with a metric-gated canary."""

    kind: Literal["ModelVersion"] = "ModelVersion"
    spec: ModelVersionSpec = Field(description="Desired version and its rollout.")
    status: ModelVersionStatus | None = Field(default=None, description="Rollout progress.")


# ---------------------------------------------------------------------------------------------
# ServerAssignment


class AssignedShard(ApiModel):
    """One shard replica a server must hold, of one version."""

    model: Name = Field(description="Model name.")
    shard: int = Field(ge=0, le=100000, description="Index of the shard in the model.")
    version: str = Field(max_length=63, description="Version of the model to load.")
    uri: str = Field(max_length=2048, description="Artifact URI of that version.")
    bytes: int = Field(ge=0, le=MAX_SHARD_BYTES, description="Memory the shard takes.")
    drain: bool = Field(
        default=False,
        description="The replica moves elsewhere: keep serving it until the operator removes it once its replacement is ready.",
    )


class ServerAssignmentSpec(ApiModel):
    """What one server must hold; written by the operator, read by the server's agent."""

    pool: Name = Field(description="ServerPool the server belongs to.")
    server: Name = Field(description="Name of the server pod.")
    zone: str = Field(default="", max_length=63, description="Zone the server was placed in.")
    shards: Annotated[list[AssignedShard], ListSchema("atomic")] = Field(
        default_factory=list, max_length=20000, description="Shard replicas to hold."
    )


class ModelRouting(ApiModel):
    """Traffic weights of one model's versions on this server."""

    model: Name = Field(description="Model name.")
    weights: list[VersionWeight] = Field(max_length=8, description="Percent per version.")
    applied_at: datetime | None = Field(
        default=None, description="When the agent applied these weights (agent status only)."
    )


class LoadedShard(ApiModel):
    """One shard replica the agent has loaded."""

    model: str = Field(max_length=63, description="Model name.")
    shard: int = Field(ge=0, description="Shard index.")
    version: str = Field(max_length=63, description="Loaded version.")
    bytes: int = Field(ge=0, description="Memory taken.")


class FailedLoad(ApiModel):
    """One shard replica the agent failed to load, and why."""

    model: str = Field(max_length=63, description="Model name.")
    shard: int = Field(ge=0, description="Shard index.")
    version: str = Field(max_length=63, description="Version that failed to load.")
    error: str = Field(default="", max_length=512, description="The engine's error, for people.")


class ServerAssignmentStatus(ApiModel):
    """What the agent actually holds and applies; written by the agent."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation the agent has applied."
    )
    loaded: Annotated[list[LoadedShard], ListSchema("atomic")] = Field(
        default_factory=list, max_length=20000, description="Shards loaded and serving."
    )
    shards_loaded: int = Field(default=0, description="Number of loaded shard replicas.")
    bytes_loaded: int = Field(default=0, description="Memory held by loaded shards.")
    routing: list[ModelRouting] = Field(
        default_factory=list, max_length=256, description="Weights the agent applies."
    )
    heartbeat: datetime | None = Field(default=None, description="Last time the agent reported.")
    message: str = Field(default="", max_length=4096, description="Last load error, if any.")
    failed: Annotated[list[FailedLoad], ListSchema("atomic")] = Field(
        default_factory=list,
        max_length=20000,
        description="Every shard replica whose load failed (what the operator acts on; message is for people).",
    )
    conditions: Conditions = Field(default_factory=list)


class ServerAssignment(Resource):
    """The shards and versions one server pod must hold, and what its agent reports."""

    kind: Literal["ServerAssignment"] = "ServerAssignment"
    spec: ServerAssignmentSpec = Field(description="What the server must hold.")
    status: ServerAssignmentStatus | None = Field(default=None, description="What it holds.")


def _non_decreasing(values: list[int]) -> bool:
    return all(a <= b for a, b in pairwise(values))


REQUEST_ANNOTATION = "ekko.dev/request"
"""Annotation on a ModelVersion carrying a user request: promote, pause, resume, abort, rollback, retry."""
REQUEST_AT_ANNOTATION = "ekko.dev/request-at"
"""RFC 3339 time of the request; the operator acts once per distinct value."""
ROLLBACK_TO_ANNOTATION = "ekko.dev/rollback-to"
"""Optional version a rollback returns to (must still be resident)."""
REQUEST_VERBS = ("promote", "promote-full", "pause", "resume", "abort", "rollback", "retry")

RESOURCE_TYPES: tuple[type[Resource], ...] = (ServerPool, Model, ModelVersion, ServerAssignment)

for _model in (ModelSpec, ServerAssignmentSpec):
    _model.model_rebuild()


def parse_resource(doc: dict[str, Any]) -> Resource:
    """Parse a manifest of any Ekko kind into its type (raises pydantic's ValidationError)."""
    kinds = {t.model_fields["kind"].default: t for t in RESOURCE_TYPES}
    kind = doc.get("kind")
    if kind not in kinds:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(sorted(kinds))}")
    return kinds[kind].model_validate(doc)
