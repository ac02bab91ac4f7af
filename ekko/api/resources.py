"""Ekko's custom resources: ServerPool, Model, ModelVersion and ServerAssignment.

These pydantic models are the API. ``make crds`` turns them into ``crds/*.yaml`` (see
:mod:`ekko.api.crdgen`); every field's description becomes ``kubectl explain`` text. Cross-field
rules are CEL rules on the CRD with a Python twin here (``__cel__``), so a manifest is judged the
same way by the API server and offline.
"""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator

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

MAX_ASSIGNED_SHARDS = 20000
"""Most shard replicas one ServerAssignment lists (``spec.shards``; also what its status reports).
The solver plans at most this many replicas per server (``ekko.solver.Pool``), so every plan fits
an assignment the API server accepts."""
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
RESERVED_AGENT_FLAGS = (
    "--listen",
    "--engine",
    "--update-listen",
    "--pod-name",
    "--namespace",
    "--kubeconfig",
)
"""Agent flags the operator sets itself (ports, probes and identity must agree with the pod)."""

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

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.agentArgs) || self.agentArgs.all(a, "
            + " && ".join(f"!a.startsWith('{flag}')" for flag in RESERVED_AGENT_FLAGS)
            + ")",
            message="agentArgs must not set "
            + ", ".join(RESERVED_AGENT_FLAGS)
            + ": Ekko sets them so that the agent's ports, probes and identity agree",
            check=lambda s: not any(a.startswith(RESERVED_AGENT_FLAGS) for a in s.agent_args),
        ),
    )

    image: str = Field(
        min_length=1, max_length=512, description="Image of the inference engine container."
    )
    engine: Literal["reference", "sim", "embedding"] = Field(
        default="reference",
        description="Engine adapter the agent uses: reference (loads shard files and checks their size), sim (simulated loads, for tests and demos) or embedding (recommender rows kept fresh by an UpdateStream and scored on /score).",
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
    # The rest of a real server pod, kept verbatim as in a Pod spec (the API server checks each
    # piece when the operator creates the pod; a refusal is reported on the pool).
    labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra labels of the server pods; Ekko's own (ekko.dev/pool, ekko.dev/server, ekko.dev/zone, app.kubernetes.io/managed-by) win.",
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra annotations of the server pods (Ekko sets the prometheus.io scrape annotations of the agent).",
    )
    pod_security_context: EmbeddedObject = Field(
        default_factory=dict,
        description="Pod-level securityContext, as in a Pod spec (for the restricted Pod Security Standard: runAsNonRoot true, seccompProfile RuntimeDefault).",
    )
    security_context: EmbeddedObject = Field(
        default_factory=dict,
        description="securityContext of the engine container, as in a Pod spec (for the restricted Pod Security Standard: allowPrivilegeEscalation false, capabilities drop ALL). The agent sidecar always runs restricted.",
    )
    ports: list[EmbeddedObject] = Field(
        default_factory=list,
        max_length=16,
        description="Ports of the engine container, as in a Pod spec; 9400 and 9500 are the agent's.",
    )
    readiness_probe: EmbeddedObject = Field(
        default_factory=dict,
        description="Readiness probe of the engine container, as in a Pod spec; the pod serves only when the engine and the agent are both ready.",
    )
    liveness_probe: EmbeddedObject = Field(
        default_factory=dict,
        description="Liveness probe of the engine container, as in a Pod spec.",
    )
    volume_mounts: list[EmbeddedObject] = Field(
        default_factory=list,
        max_length=32,
        description="Volume mounts of the engine container, as in a Pod spec.",
    )
    volumes: list[EmbeddedObject] = Field(
        default_factory=list,
        max_length=32,
        description="Volumes of the server pods (secrets, config maps, model caches), as in a Pod spec.",
    )
    image_pull_secrets: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        max_length=16,
        description="Names of the Secrets used to pull the engine and agent images.",
    )
    affinity: EmbeddedObject = Field(
        default_factory=dict,
        description="Affinity of the server pods, as in a Pod spec; Ekko adds the zone of each server to its nodeSelector.",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the server pods."
    )
    agent_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=32,
        description="Extra arguments of the Ekko agent sidecar, e.g. --sim-bandwidth=1Gi, --heartbeat-seconds=5, or --enable-fault-injection with --fault for tests and demos (see `ekko agent --help`). --listen, --engine, --update-listen, --pod-name, --namespace and --kubeconfig are Ekko's and refused here.",
    )
    agent_resources: ContainerResources = Field(
        default_factory=lambda: ContainerResources(requests={"cpu": "50m", "memory": "64Mi"}),
        description="Requests and limits of the agent sidecar (default: requests cpu 50m, memory 64Mi).",
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


class UpdateStrategy(ApiModel):
    """How existing servers follow an edit of the pool's template."""

    type: Literal["RollingUpdate", "OnDelete"] = Field(
        default="RollingUpdate",
        description="RollingUpdate replaces servers made from an older template, make-before-break: a new server loads the shards of the one it replaces, and the old one is deleted only once they are served there. OnDelete replaces nothing; a server pod you delete comes back with the new template.",
    )
    max_surge: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Outdated servers replaced at once (each needs one extra server while its shards move, within maxServers). An empty outdated server is recreated in place and counts too.",
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
    update_strategy: UpdateStrategy = Field(
        default_factory=UpdateStrategy,
        description="How existing servers follow template edits: one at a time, make-before-break, by default.",
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
    """Observed state of a ServerPool.

    One writer, the pool worker, which applies it whole (server-side apply as ``ekko-pool``;
    docs/architecture.md, "Who owns which status field").
    """

    observed_generation: int | None = Field(
        default=None, description="The spec generation this status describes."
    )
    servers_wanted: int = Field(default=0, description="Servers the current plan needs.")
    servers_ready: int = Field(default=0, description="Servers whose agent reports ready.")
    plan: PlanSummary | None = Field(default=None, description="Summary of the last plan.")
    conditions: Conditions = Field(default_factory=list)
    # Template roll (written by the pool worker with the fields above).
    template_hash: str = Field(
        default="",
        max_length=64,
        description="Hash of the server pod the template renders now; server pods carry theirs in the ekko.dev/template-hash label.",
    )
    updated_servers: int = Field(
        default=0, ge=0, description="Live servers made from the current template."
    )
    outdated_servers: int = Field(
        default=0,
        ge=0,
        description="Live servers made from an older template, still to be replaced.",
    )


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
        # A transition rule (oldSelf): the API server checks it on update; offline there is no
        # old object, so its twin accepts. Editing the version in place swapped every replica
        # to it with no canary while status still named the old one.
        CelRule(
            rule="self.version == oldSelf.version",
            message="spec.version is the version the model started with and cannot be changed; "
            "roll a new version out with a ModelVersion (see examples/modelversion.yaml)",
            check=lambda s: True,
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


class ModelUpdateControl(ApiModel):
    """What the agents of a model need fast from its update stream's state manager; written only
    on transitions (every write wakes every agent that holds the model)."""

    epoch: int = Field(
        default=0,
        ge=0,
        description="Epoch of the model's rows: an agent holding an older one restores restoreCut at this epoch and refuses older-epoch rows above it.",
    )
    restore_cut: int | None = Field(
        default=None, ge=0, description="Cut the state was restored to at this epoch."
    )
    baseline_cut: int | None = Field(default=None, ge=0, description="Cut the baseline view reads.")
    recent_cut: int | None = Field(
        default=None,
        ge=0,
        description="Cut the recent view reads: labelled live requests shadow-scored on the baseline are also scored on it (absent: no recent view).",
    )
    view: Literal["Live", "Baseline"] = Field(
        default="Live",
        description="Live: the newest rows serve (the baseline a sliver); Baseline: every request is served from the baseline cut (during a rollback).",
    )


StatusOwner = Literal["pool-worker", "rollout-worker", "state-manager"]
"""A component that writes part of a Model's status (docs/architecture.md, "Who owns which status
field"); ``kubectl ekko rollback`` writes the rollout worker's routing fields in its name."""


class ModelStatus(ApiModel):
    """Observed state of a Model.

    Three components write it, each only its own fields (``OWNERS``), with server-side apply
    under a field manager of its own; :meth:`owned_wire` is what one of them sends.
    """

    OWNERS: ClassVar[dict[StatusOwner, tuple[str, ...]]] = {
        "pool-worker": (
            "observed_generation",
            "replicas_wanted",
            "replicas_placed",
            "replicas_ready",
            "ready",
            "conditions",
        ),
        "rollout-worker": (
            "stable_version",
            "canary_version",
            "previous_version",
            "weights",
            "canary_weight",
        ),
        "state-manager": ("updates",),
    }

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
    updates: ModelUpdateControl | None = Field(
        default=None,
        description="The update stream's control block for the agents (epoch, serving view, baseline cut).",
    )
    replicas_wanted: int = Field(default=0, description="Shard replicas the model needs.")
    replicas_placed: int = Field(default=0, description="Shard replicas assigned to servers.")
    replicas_ready: int = Field(default=0, description="Shard replicas agents report loaded.")
    ready: str = Field(
        default="", max_length=32, description="Ready over wanted replicas, for kubectl get."
    )
    conditions: Conditions = Field(default_factory=list)

    @field_validator("stable_version", "canary_version", "previous_version", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # The rollout worker writes "" for "no version": a server-side apply cannot send null,
        # and leaving the field out would keep another manager's stale value.
        return None if value == "" else value

    def owned_wire(self, owner: StatusOwner) -> dict[str, Any]:
        """The fields ``owner`` writes, as sent to the API server: every one of them, always (a
        field a manager leaves out of its apply is removed), an absent version as ""."""
        fields = self.OWNERS[owner]
        # exclude_none: the schema has no nullable field, nested ones included (a condition
        # without observedGeneration is refused if sent as null).
        wire = self.model_dump(by_alias=True, mode="json", include=set(fields), exclude_none=True)
        for name in ("stable_version", "canary_version", "previous_version"):
            key = type(self).model_fields[name].alias or name
            if name in fields and wire.get(key) is None:
                wire[key] = ""
        return wire


class Model(Resource):
    """A model whose shards Ekko places on a ServerPool."""

    kind: Literal["Model"] = "Model"
    spec: ModelSpec = Field(description="Desired model.")
    status: ModelStatus | None = Field(default=None, description="Observed model.")

    def stable(self) -> str:
        """The version the model serves as stable: the one a rollout recorded in status, else
        the version in its spec (a model no rollout has touched). The one definition the pool
        worker, the rollout worker and the plugin share."""
        return (self.status.stable_version if self.status else None) or self.spec.version


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
        description="sha256:<hex> digest of the artifact, recorded with the version. Not verified by the agent yet: it checks each shard's size only.",
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
        description="Prometheus base URL; defaults to the operator's --prometheus-url. Any other address must be allowed by the operator's --allow-prometheus-address, else each measurement is an error.",
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
        description="PromQL query; {{model}}, {{version}} (this version) and {{stable}} (the version it is compared with) are replaced before it runs.",
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
        CelRule(  # a transition rule, as on ModelSpec.version
            rule="self.model == oldSelf.model && self.version == oldSelf.version",
            message="spec.model and spec.version of a ModelVersion cannot be changed (a rollout "
            "in flight would route to a version no server holds); create a new ModelVersion",
            check=lambda s: True,
        ),
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
    """Observed state of a ModelVersion rollout.

    One writer, the rollout worker, which applies it whole (server-side apply as
    ``ekko-rollout``); ``kubectl ekko`` writes requests as annotations, never this.
    """

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
    request_refused: str = Field(
        default="",
        max_length=1024,
        description="Why the operator refused the last request (handledRequest); empty when it carried it out.",
    )
    paused_by_user: bool = Field(default=False, description="Paused by a pause request.")
    paused_until: datetime | None = Field(
        default=None,
        description="When a timed pause step (pause.duration) ends; set only while in one (phase Paused).",
    )
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


UPDATE_URL_PATTERN = r"^https?://[^\s/]+(/.*)?$"
UpdateUrl = Annotated[str, Field(min_length=8, max_length=2048, pattern=UPDATE_URL_PATTERN)]
Region = Annotated[str, Field(max_length=63)]


class UpdateUpstream(ApiModel):
    """A peer one server pulls parameter updates from."""

    url: UpdateUrl = Field(description="Data-plane URL of the peer (http://host:port).")
    server: str = Field(
        default="",
        max_length=253,
        description="Server pod of the peer; empty when the peer is the stream's source (the trainer).",
    )
    region: Region = Field(default="", description="Region of the peer (labels its bytes).")
    bandwidth: int = Field(
        default=0,
        ge=0,
        le=10**12,
        description="Bytes per second this link may carry; 0 means uncapped.",
    )


class UpdateGuard(ApiModel):
    """The parameter guard: every server judges the rows it applies against its table's running
    row norm (and, opted in, the running update size) and counts rows wiped to zero, exploded or
    non-finite; enough of them in one detector window make the model Corrupted at once."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="(has(self.zeroRatio) ? self.zeroRatio : 0.01) < "
            "(has(self.zeroFrom) ? self.zeroFrom : 0.1)",
            message="zeroRatio must be below zeroFrom (a row wiped to zeroRatio of the mean norm "
            "from at least zeroFrom of it)",
            check=lambda s: s.zero_ratio < s.zero_from,
        ),
    )

    rows: int = Field(
        ge=1,
        le=10**7,
        description="Rows flagged zeroed or exploded on one server within one detector window that make the model Corrupted; a non-finite row always does.",
    )
    step_ratio: float | None = Field(
        default=None,
        ge=2,
        le=1000,
        description="Also flag a row whose update (new minus old) exceeds this many times the table's mean update; absent: no update-size test (it would also flag a clean catch-up burst).",
    )
    zero_ratio: float = Field(
        default=0.01,
        ge=0,
        le=0.5,
        description="A row counts as zeroed when its norm falls to at most this times the table's mean row norm (from at least zeroFrom times it).",
    )
    zero_from: float = Field(
        default=0.1,
        ge=0.001,
        le=1,
        description="A zeroed row's norm before the write, at least this times the table's mean row norm (a trained row wiped, not a near-zero row nudged); above zeroRatio.",
    )
    norm_ratio: float = Field(
        default=10,
        ge=2,
        le=10**6,
        description="A row counts as exploded when its norm exceeds this times the table's mean row norm.",
    )
    warmup: int = Field(
        default=500,
        ge=0,
        le=10**7,
        description="Rows of a table the running means must have seen before the guard flags any of its rows.",
    )


class DutyHealth(ApiModel):
    """What one server does for the model-state manager."""

    traffic_percent: float = Field(
        default=0.5, ge=0, le=5, description="Percent of requests served from the baseline view."
    )
    shadow_percent: int = Field(
        default=100,
        ge=0,
        le=100,
        description="Percent of labelled live requests also scored on the baseline view.",
    )
    undo_log_bytes: int = Field(
        default=256 << 20,
        ge=1 << 20,
        le=64 << 30,
        description="Cap on the undo logs of retained cuts, in bytes.",
    )
    guard: UpdateGuard | None = Field(
        default=None,
        description="Count applied rows the parameter guard flags (the stream's health.guard); absent: off.",
    )


class UpdateDuty(ApiModel):
    """What one server does for one model's update stream; written by the operator."""

    model: Name = Field(description="Model whose parameter rows the server keeps fresh.")
    stream: Name = Field(description="UpdateStream (same namespace) this duty comes from.")
    region: Region = Field(default="", description="Region the server is in.")
    group: int = Field(
        default=0, ge=0, le=100000, description="Shard group the duty is for (0 when Replicated)."
    )
    role: Literal["Leader", "Follower"] = Field(
        description="Leader pulls from the source and other regions' leaders; Follower from its leader."
    )
    upstreams: Annotated[list[UpdateUpstream], ListSchema("atomic")] = Field(
        default_factory=list,
        max_length=16,
        description="Peers to pull from, preferred first; the next is used only while earlier ones fail.",
    )
    values: Literal["Float32", "Float16", "Int8"] = Field(
        default="Float32", description="Value encoding to ask upstreams for."
    )
    codec: Literal["None", "Zstd"] = Field(
        default="None", description="Frame compression to ask upstreams for."
    )
    policy: Literal["Ekko", "Fifo"] = Field(
        default="Ekko", description="How this server orders rows for its own downstreams."
    )
    high_percentile: int = Field(
        default=90, ge=50, le=99, description="Percentile of priority above which a row is high."
    )
    idle_pull_seconds: int = Field(
        default=10, ge=1, le=300, description="Long-poll timeout of a pull with nothing new."
    )
    paused: bool = Field(default=False, description="Stop pulling; keep serving what is held.")
    weight: int = Field(
        default=100,
        ge=1,
        le=100,
        description="The model's weight p_m in percent: the stream's Fixed weight, or the model's share of the pool's streamed traffic (TrafficShare). It ranks this model's rows against another stream's when one pull carries both.",
    )
    health: DutyHealth | None = Field(
        default=None,
        description="Keep cuts and a baseline view for the model-state manager; absent: off.",
    )
    pod_uid: str = Field(
        default="",
        max_length=128,
        description="UID of the server's pod when the duty was written: a pod replaced under the same name (an empty store) loses its leadership, also across operator restarts.",
    )


class ServerAssignmentSpec(ApiModel):
    """What one server must hold; written by the operator, read by the server's agent."""

    pool: Name = Field(description="ServerPool the server belongs to.")
    server: Name = Field(description="Name of the server pod.")
    zone: str = Field(default="", max_length=63, description="Zone the server was placed in.")
    shards: Annotated[list[AssignedShard], ListSchema("atomic")] = Field(
        default_factory=list, max_length=MAX_ASSIGNED_SHARDS, description="Shard replicas to hold."
    )
    updates: Annotated[list[UpdateDuty], ListSchema("atomic")] = Field(
        default_factory=list,
        max_length=256,
        description="Update streams this server takes part in: per model, its region, role and upstreams.",
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


class ServerUpdateState(ApiModel):
    """One model's update state on one server, as its agent reports it."""

    model: Name = Field(description="Model.")
    view: Literal["Live", "Baseline"] = Field(
        default="Live", description="The view serving every request but the baseline sliver."
    )
    epoch: int = Field(default=0, ge=0, description="Epoch of the newest rows held.")
    cuts: Annotated[list[int], ListSchema("atomic")] = Field(
        default_factory=list, max_length=256, description="Cuts retained (oldest first)."
    )
    switched_at: datetime | None = Field(
        default=None, description="When the serving view last changed."
    )
    restored_at: datetime | None = Field(
        default=None, description="When the state was last restored to a cut."
    )
    message: str = Field(default="", max_length=1024, description="Why a step could not be done.")


class ServerAssignmentStatus(ApiModel):
    """What the agent actually holds and applies; written by the agent."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation the agent has applied."
    )
    loaded: Annotated[list[LoadedShard], ListSchema("atomic")] = Field(
        default_factory=list,
        max_length=MAX_ASSIGNED_SHARDS,
        description="Shards loaded and serving.",
    )
    shards_loaded: int = Field(default=0, description="Number of loaded shard replicas.")
    bytes_loaded: int = Field(default=0, description="Memory held by loaded shards.")
    routing: list[ModelRouting] = Field(
        default_factory=list, max_length=256, description="Weights the agent applies."
    )
    heartbeat: datetime | None = Field(default=None, description="Last time the agent reported.")
    pod_uid: str = Field(
        default="",
        max_length=128,
        description="UID of the pod whose agent wrote this report (downward API metadata.uid). "
        "The operator counts loaded and routing only when it matches the UID of the server's "
        "current pod, so an agent of a deleted same-named pod is not counted; a report without "
        "it (an agent from before this field) counts only when newer than the current pod.",
    )
    message: str = Field(default="", max_length=4096, description="Last load error, if any.")
    failed: Annotated[list[FailedLoad], ListSchema("atomic")] = Field(
        default_factory=list,
        max_length=MAX_ASSIGNED_SHARDS,
        description="Every shard replica whose load failed (what the operator acts on; message is for people).",
    )
    update_address: str = Field(
        default="",
        max_length=2048,
        description="Data-plane URL of the agent's update node (http://pod-ip:9500), empty when it runs none.",
    )
    updates: Annotated[list[ServerUpdateState], ListSchema("atomic")] = Field(
        default_factory=list,
        max_length=256,
        description="Per model with an update stream: the serving view, epoch and cuts held.",
    )
    conditions: Conditions = Field(default_factory=list)


class ServerAssignment(Resource):
    """The shards and versions one server pod must hold, and what its agent reports."""

    kind: Literal["ServerAssignment"] = "ServerAssignment"
    spec: ServerAssignmentSpec = Field(description="What the server must hold.")
    status: ServerAssignmentStatus | None = Field(default=None, description="What it holds.")


# ---------------------------------------------------------------------------------------------
# UpdateStream

UpdateState = Literal["Pending", "Streaming", "Degraded", "Paused"]
LinkRate = Annotated[Quantity, quantity_range("1", "1T", "10Mi")]
LinkBurst = Annotated[Quantity, quantity_range("1Ki", "1Gi", "1Mi")]


class UpdateSource(ApiModel):
    """Where the rows come from: the trainer-side publishers (``ekko.updates.publisher``)."""

    endpoints: Annotated[list[UpdateUrl], ListSchema("atomic")] = Field(
        min_length=1,
        max_length=8,
        description="Data-plane URLs of the publishers (http://host:9500), preferred first.",
    )
    region: Region = Field(
        default="",
        description="Region the publishers run in; pulls from other regions cross the WAN.",
    )


class UpdateTable(ApiModel):
    """One parameter table the stream carries."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.kind == 'Dense' || !has(self.chunkSize)",
            message="chunkSize applies only to Dense tables",
            check=lambda t: t.kind == "Dense" or t.chunk_size is None,
        ),
    )

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="Table name as the trainer publishes it (for example ranker.user).",
    )
    kind: Literal["Embedding", "Dense"] = Field(
        default="Embedding",
        description="Embedding: rows keyed by id; Dense: a tensor cut into keyed chunks.",
    )
    dim: int = Field(ge=1, le=65536, description="Floats per row (per chunk for Dense tables).")
    chunk_size: int | None = Field(
        default=None,
        ge=1,
        le=1048576,
        description="Dense tables: elements per chunk on the wire; defaults to dim.",
    )


class UpdateTopology(ApiModel):
    """How servers are wired into a pull tree."""

    region_label: str | None = Field(
        default=None,
        max_length=253,
        description="Node label whose values are regions; defaults to the pool's topologyKey.",
    )
    leader_per_region: bool = Field(
        default=True,
        description="One leader per region pulls across the WAN and the others pull from it; off: every server pulls from the source.",
    )
    idle_pull_interval: Annotated[Duration, duration_range("1s", "5m")] = Field(
        default="10s",
        description="How long a pull waits for news before returning empty (long poll); from 1s to 5m.",
    )


class LinkBudget(ApiModel):
    """A bandwidth budget for the links from one region to another."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.fromRegion != self.toRegion",
            message="an override is for links between two different regions",
            check=lambda b: b.from_region != b.to_region,
        ),
    )

    from_region: Region = Field(
        description="Region of the upstream (the source's region for the source)."
    )
    to_region: Region = Field(description="Region of the pulling server.")
    rate: LinkRate = Field(description="Bytes per second per link, from 1 to 1T.")


class UpdateBandwidth(ApiModel):
    """Per-link byte budgets: a link never carries more; the scheduler fills it by priority."""

    wan: LinkRate | None = Field(
        default=None, description="Bytes per second of each cross-region link; absent: uncapped."
    )
    lan: LinkRate | None = Field(
        default=None, description="Bytes per second of each in-region link; absent: uncapped."
    )
    overrides: Annotated[list[LinkBudget], ListSchema("atomic")] = Field(
        default_factory=list,
        max_length=64,
        description="Budgets for particular region pairs, over wan.",
    )


class UpdatePriority(ApiModel):
    """What goes first when a link is short: Ekko's p = (significance + freshness) × model weight."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.modelWeight == 'Fixed' || !has(self.weight)",
            message="weight applies only when modelWeight is Fixed",
            check=lambda p: p.model_weight == "Fixed" or p.weight is None,
        ),
    )

    policy: Literal["Ekko", "Fifo"] = Field(
        default="Ekko", description="Ekko: by priority; Fifo: oldest write first (the baseline)."
    )
    high_percentile: int = Field(
        default=90, ge=50, le=99, description="Rows above this percentile of priority are high."
    )
    new_rows_high: bool = Field(
        default=True, description="Rows a peer never received (new users and items) go first."
    )
    model_weight: Literal["Fixed", "TrafficShare"] = Field(
        default="Fixed",
        description="The model's weight p_m: Fixed (weight), or TrafficShare: its share of the requests served by the models with streams on the same pool, read from Prometheus (without one: Fixed at 100, and the TrafficShare condition says so).",
    )
    weight: int | None = Field(
        default=None, ge=1, le=100, description="Fixed model weight in percent; defaults to 100."
    )


class UpdateCompression(ApiModel):
    """How rows are encoded on the wire."""

    values: Literal["Float32", "Float16", "Int8"] = Field(
        default="Float16",
        description="Float32, Float16 (clipped to ±65504) or Int8 with a per-row scale.",
    )
    codec: Literal["None", "Zstd"] = Field(default="Zstd", description="Frame compression.")


class UpdateBaseline(ApiModel):
    """The baseline view: the model's state at a cut a few minutes old, read through the undo
    log (no second copy of the model)."""

    age: Annotated[Duration, duration_range("0s", "1h")] = Field(
        default="2m",
        description="The baseline is the newest cut at least this old; it advances only while the model is Healthy, so a harmful update never reaches it. From 0s to 1h.",
    )
    traffic_percent: float = Field(
        default=0.5,
        ge=0,
        le=5,
        description="Percent of requests served from the baseline view (0.5 by default, at most 5).",
    )
    shadow_percent: int = Field(
        default=100,
        ge=0,
        le=100,
        description="Percent of labelled live requests also scored on the baseline: the paired loss differences the detector judges.",
    )


class UpdateDetector(ApiModel):
    """Judges windows of paired loss differences, loss(live) − loss(baseline), in nats."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.uncertain <= self.corrupted",
            message="uncertain must not exceed corrupted",
            check=lambda d: d.uncertain <= d.corrupted,
        ),
    )

    window: Annotated[Duration, duration_range("2s", "10m")] = Field(
        default="10s", description="Length of a window of paired differences; from 2s to 10m."
    )
    min_samples: int = Field(
        default=100,
        ge=2,
        le=10**7,
        description="A window with fewer paired samples is no data and changes nothing.",
    )
    uncertain: float = Field(
        default=0.02, ge=0, le=10, description="Mean difference from which a window is Suspect."
    )
    corrupted: float = Field(
        default=0.05,
        ge=0,
        le=10,
        description="Mean difference from which a window is Bad (when also z standard errors above zero).",
    )
    z: float = Field(
        default=1.5, ge=0, le=10, description="Standard errors a Bad window's mean must clear."
    )
    confirmations: int = Field(
        default=2, ge=1, le=20, description="Consecutive Bad windows that make the model Corrupted."
    )
    hysteresis: float = Field(
        default=0.01,
        ge=0,
        le=10,
        description="A window is Good below uncertain minus this (in between nothing changes).",
    )
    recover_windows: int = Field(
        default=2, ge=1, le=100, description="Good windows that bring Uncertain back to Healthy."
    )
    cusum_slack: float | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Slack per sample of a one-sided CUSUM over the differences (slow drifts); absent: off.",
    )
    cusum_threshold: float = Field(
        default=10.0,
        ge=0.001,
        le=10**6,
        description="The CUSUM declares Corrupted when its sum reaches this.",
    )


class UpdateRecentView(ApiModel):
    """A second shadow view at a cut only about a window old: the paired difference
    loss(live) − loss(recent) has no minutes of freshness gain in it, so a small harm the baseline
    comparison hides shows. Advanced only while Healthy (held just before a harm while the detector
    makes up its mind); a yardstick, not a safe state: a rollback still goes to the baseline."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.uncertain <= self.corrupted",
            message="recent uncertain must not exceed recent corrupted",
            check=lambda r: r.uncertain <= r.corrupted,
        ),
    )

    age: Annotated[Duration, duration_range("0s", "1h")] = Field(
        default="30s",
        description="The recent view is the newest cut at least this old; it must be younger than the baseline to help, and old enough that a harm is judged over one whole window against a cut taken before it (two windows or more). From 0s to 1h.",
    )
    uncertain: float = Field(
        default=0.0015,
        ge=0,
        le=10,
        description="Mean loss(live) − loss(recent) from which a window is Suspect (plus the learnt lift).",
    )
    corrupted: float = Field(
        default=0.006,
        ge=0,
        le=10,
        description="Mean loss(live) − loss(recent) from which a window is Bad, when also z standard errors above zero (plus the learnt lift). While Uncertain the recent windows since leaving Healthy are pooled into one test.",
    )
    hysteresis: float = Field(
        default=0.003,
        ge=0,
        le=10,
        description="A recent window is Good below uncertain minus this.",
    )
    sigmas: float = Field(
        default=4.0,
        ge=0,
        le=100,
        description="Both recent thresholds are raised by this many times a scale learnt while Healthy (the RMS of the positive part of clean recent windows' means); 0: fixed thresholds.",
    )
    memory: int = Field(
        default=50,
        ge=1,
        le=10000,
        description="Windows the learnt scale remembers (an EWMA).",
    )
    warmup: int = Field(
        default=5,
        ge=0,
        le=10000,
        description="Windows that must feed the learnt scale before the recent comparison judges (with sigmas above 0).",
    )


class UpdateHealth(ApiModel):
    """The model-state manager: cuts, a baseline view, a detector, and what to do on Corrupted."""

    action: Literal["Alert", "Pause", "Rollback"] = Field(
        default="Rollback",
        description="On Corrupted: Alert only reports; Pause stops updates and serves the baseline until a person resumes; Rollback serves the baseline, restores the state to its cut at the next epoch, then serves live again.",
    )
    snapshot_interval: Annotated[Duration, duration_range("5s", "1h")] = Field(
        default="30s", description="How often a cut is taken on every replica; from 5s to 1h."
    )
    undo_log_bytes: Annotated[Quantity, quantity_range("1Mi", "64Gi", "256Mi")] = Field(
        default="256Mi",
        description="Per replica cap on the undo logs of retained cuts; past it the oldest cut is dropped.",
    )
    repeat_window: Annotated[Duration, duration_range("0s", "24h")] = Field(
        default="10m",
        description="Corrupted again this soon after a rollback: pause for a person instead of rolling back again.",
    )
    baseline: UpdateBaseline = Field(
        default_factory=UpdateBaseline, description="The baseline view."
    )
    detector: UpdateDetector = Field(
        default_factory=UpdateDetector, description="The detector's thresholds."
    )
    recent: UpdateRecentView | None = Field(
        default=None,
        description="A second, seconds-old shadow view the detector also judges (the worse verdict of the two counts); absent: the baseline comparison only.",
    )
    guard: UpdateGuard | None = Field(
        default=None,
        description="The parameter guard: servers count applied rows wiped to zero, exploded or non-finite; absent: off.",
    )


class UpdateStreamSpec(ApiModel):
    """Streaming parameter updates for one Model, from its trainer to every server holding it."""

    __cel__: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.tables.all(t, self.tables.exists_one(u, u.name == t.name))",
            message="table names must be unique",
            check=lambda s: len({t.name for t in s.tables}) == len(s.tables),
        ),
    )

    model: Name = Field(description="Model (same namespace) whose servers receive the updates.")
    source: UpdateSource = Field(description="The publishers the rows come from.")
    tables: Annotated[list[UpdateTable], ListSchema("atomic")] = Field(
        min_length=1, max_length=64, description="Tables the stream carries."
    )
    key_mapping: Literal["Replicated", "Modulo"] = Field(
        default="Replicated",
        description="Replicated: every server of the model keeps every row (one pull tree per region); Modulo: key k belongs to model shard k mod shards (one pull tree per shard and region).",
    )
    topology: UpdateTopology = Field(
        default_factory=UpdateTopology, description="How servers are wired."
    )
    bandwidth: UpdateBandwidth = Field(
        default_factory=UpdateBandwidth, description="Per-link byte budgets."
    )
    priority: UpdatePriority = Field(
        default_factory=UpdatePriority, description="What goes first on a short link."
    )
    compression: UpdateCompression = Field(
        default_factory=UpdateCompression, description="Wire encoding."
    )
    paused: bool = Field(
        default=False, description="Stop pulling everywhere; servers keep serving what they hold."
    )
    health: UpdateHealth | None = Field(
        default=None,
        description="The model-state manager: catch a harmful update and roll the state back; absent: off.",
    )


class RegionFreshness(ApiModel):
    """Freshness of one region."""

    region: str = Field(max_length=63, description="Region.")
    leader: str = Field(default="", max_length=253, description="Server leading the region.")
    servers: int = Field(default=0, ge=0, description="Servers of the model in the region.")
    lag_p50_seconds: float | None = Field(
        default=None, ge=0, description="Median publish-to-apply lag in the region."
    )
    lag_p99_seconds: float | None = Field(
        default=None, ge=0, description="99th percentile publish-to-apply lag in the region."
    )


class UpdateFreshness(ApiModel):
    """How old the rows servers apply are when they arrive (publish at the source to apply)."""

    p50_seconds: float | None = Field(default=None, ge=0, description="Median lag, all classes.")
    p99_seconds: float | None = Field(
        default=None, ge=0, description="99th percentile lag, all classes."
    )
    high_p99_seconds: float | None = Field(
        default=None, ge=0, description="99th percentile lag of new and high-priority rows."
    )
    regions: Annotated[list[RegionFreshness], ListSchema("atomic")] = Field(
        default_factory=list, max_length=64, description="Per region, with its leader."
    )
    source: Literal["Prometheus", "Agents"] | None = Field(
        default=None,
        description="Where the operator read the servers' update series: Prometheus (when it was given --prometheus-url and the query answered) or each agent's /metrics directly.",
    )


class UpdateTraffic(ApiModel):
    """Bytes and rows the stream moves, over the last minutes."""

    wan_bytes_per_second: int = Field(
        default=0, ge=0, description="Frame bytes per second pulled across regions."
    )
    raw_bytes_per_second: int = Field(
        default=0, ge=0, description="The same rows as uncompressed float32, per second."
    )
    compression_ratio: float | None = Field(
        default=None, ge=0, description="Raw over wire bytes (all links)."
    )
    rows_per_second: float = Field(
        default=0, ge=0, description="Rows applied per second, all servers."
    )


class HealthWindow(ApiModel):
    """The last window the detector judged."""

    samples: int = Field(default=0, ge=0, description="Paired samples in the window.")
    mean_loss_difference: float | None = Field(
        default=None, description="Mean of loss(live) − loss(baseline), in nats."
    )
    verdict: str = Field(
        default="", max_length=16, description="NoData, Good, Hold, Suspect or Bad."
    )
    at: datetime | None = Field(default=None, description="When the window closed.")
    recent_samples: int | None = Field(
        default=None, ge=0, description="Paired samples against the recent view (with one)."
    )
    recent_mean_loss_difference: float | None = Field(
        default=None, description="Mean of loss(live) − loss(recent), in nats (with a recent view)."
    )


class PooledWindow(ApiModel):
    """Paired differences pooled over several windows: count, mean and standard deviation."""

    samples: int = Field(default=0, ge=0, description="Paired samples.")
    mean: float = Field(default=0.0, description="Their mean, in nats.")
    sd: float | None = Field(default=None, ge=0, description="Their sample standard deviation.")
    windows: int = Field(default=0, ge=0, description="Windows pooled.")


class RecentViewStatus(ApiModel):
    """The recent view: its cut, the learnt scale and, while Uncertain, the pooled windows."""

    cut: int | None = Field(default=None, description="Cut the recent view reads.")
    scale: float = Field(
        default=0.0,
        ge=0,
        description="Learnt scale of clean recent windows (RMS of their means' positive part), nats.",
    )
    windows_learnt: int = Field(default=0, ge=0, description="Windows that fed the learnt scale.")
    pool: PooledWindow | None = Field(
        default=None,
        description="While Uncertain: every recent window since leaving Healthy, pooled.",
    )


class UpdateRollbackRecord(ApiModel):
    """The last rollback of the model's state and when each step finished."""

    trigger: Literal["Detector", "Person"] = Field(description="Who decided.")
    cut: int | None = Field(default=None, description="Cut the state went back to.")
    epoch: int | None = Field(default=None, description="Epoch the restored state carries.")
    decided_at: datetime = Field(description="When it was decided.")
    switched_at: datetime | None = Field(
        default=None, description="When the last server began serving the baseline."
    )
    restored_at: datetime | None = Field(
        default=None, description="When the last server held the restored state."
    )
    resumed_at: datetime | None = Field(default=None, description="When live serving resumed.")
    switch_seconds: float | None = Field(
        default=None, ge=0, description="Decision to every server serving the baseline."
    )
    restore_seconds: float | None = Field(
        default=None, ge=0, description="Decision to every server holding the restored state."
    )
    publisher_restored: bool | None = Field(
        default=None,
        description="Whether the publishers restored their own tables (otherwise their old-epoch rows above the cut are refused).",
    )


class CutRecord(ApiModel):
    """A retained cut."""

    id: int = Field(ge=0, description="Cut id.")
    taken_at: datetime = Field(description="When it was taken.")


class UpdateHealthStatus(ApiModel):
    """The model-state manager's view: phase, baseline, last window and last rollback."""

    phase: Literal["Healthy", "Uncertain", "Corrupted"] = Field(
        default="Healthy", description="Healthy, Uncertain or Corrupted."
    )
    step: Literal["None", "ServingBaseline", "Restoring", "Paused"] = Field(
        default="None",
        description="Where a rollback is: ServingBaseline, Restoring, Paused (waits for a person) or None.",
    )
    since: datetime | None = Field(default=None, description="When the phase last changed.")
    baseline_cut: int | None = Field(default=None, description="Cut the baseline view reads.")
    cuts: Annotated[list[CutRecord], ListSchema("atomic")] = Field(
        default_factory=list, max_length=256, description="Cuts taken and retained, oldest first."
    )
    last_cut: int = Field(
        default=0,
        ge=0,
        description="Newest cut id taken; ids only increase, also past a restore that dropped the cuts above its own.",
    )
    bad_windows: int = Field(default=0, ge=0, description="Consecutive Bad windows.")
    good_windows: int = Field(default=0, ge=0, description="Consecutive Good windows.")
    cusum: float = Field(default=0.0, ge=0, description="The CUSUM's running sum.")
    last_window: HealthWindow | None = Field(default=None, description="The last window judged.")
    recent: RecentViewStatus | None = Field(
        default=None, description="The recent view (when spec.health.recent is set)."
    )
    last_rollback: UpdateRollbackRecord | None = Field(
        default=None, description="The last rollback of the model's state."
    )
    handled_request: str = Field(
        default="",
        max_length=64,
        description="The last request of a person (rollback or resume annotation value) acted on.",
    )


class UpdateStreamStatus(ApiModel):
    """Observed state of an UpdateStream; written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation this status describes."
    )
    state: UpdateState = Field(
        default="Pending",
        description="Pending (no server wired yet), Streaming, Degraded (servers lagging or disconnected) or Paused.",
    )
    epoch: int = Field(default=0, ge=0, description="Epoch of the rows being streamed.")
    freshness: UpdateFreshness = Field(
        default_factory=UpdateFreshness, description="Publish-to-apply lag."
    )
    traffic: UpdateTraffic = Field(default_factory=UpdateTraffic, description="Bytes and rows.")
    backlog_rows: int = Field(
        default=0, ge=0, description="Rows downstreams lack that their last pull could not carry."
    )
    servers_wanted: int = Field(default=0, ge=0, description="Servers holding the model.")
    servers_connected: int = Field(
        default=0, ge=0, description="Servers whose agent reports an update address."
    )
    servers_lagging: int = Field(
        default=0, ge=0, description="Servers whose lag p99 is over the Fresh threshold."
    )
    health: UpdateHealthStatus | None = Field(
        default=None, description="The model-state manager (when spec.health is set)."
    )
    conditions: Conditions = Field(default_factory=list)


class UpdateStream(Resource):
    """Streaming parameter updates for a Model: policy in spec, freshness and traffic in status."""

    kind: Literal["UpdateStream"] = "UpdateStream"
    spec: UpdateStreamSpec = Field(description="Where updates come from and how they travel.")
    status: UpdateStreamStatus | None = Field(default=None, description="Freshness and traffic.")


def _non_decreasing(values: list[int]) -> bool:
    return all(a <= b for a, b in pairwise(values))


REQUEST_ANNOTATION = "ekko.dev/request"
"""Annotation on a ModelVersion carrying a user request: promote, pause, resume, abort, rollback, retry."""
REQUEST_AT_ANNOTATION = "ekko.dev/request-at"
"""RFC 3339 time of the request; the operator acts once per distinct value."""
ROLLBACK_TO_ANNOTATION = "ekko.dev/rollback-to"
"""Optional version a rollback returns to (must still be resident)."""
RESUME_ANNOTATION = "ekko.dev/updates-resume-at"
"""On an UpdateStream: RFC 3339 time of a person's resume of a model-state manager paused for a
person (``kubectl ekko updates resume``); acted on once per value."""
ROLLBACK_ANNOTATION = "ekko.dev/updates-rollback-at"
"""On an UpdateStream: RFC 3339 time of a person's rollback of the model's state
(``kubectl ekko updates rollback``); acted on once per value."""
ROLLBACK_CUT_ANNOTATION = "ekko.dev/updates-rollback-to"
"""On an UpdateStream: the cut a person's rollback goes back to (default: the baseline's)."""
RequestVerb = Literal["promote", "promote-full", "pause", "resume", "abort", "rollback", "retry"]
"""What a person may ask of a rollout by annotation (``kubectl ekko`` writes them)."""
REQUEST_VERBS: tuple[RequestVerb, ...] = get_args(RequestVerb)

RESOURCE_TYPES: tuple[type[Resource], ...] = (
    ServerPool,
    Model,
    ModelVersion,
    ServerAssignment,
    UpdateStream,
)

for _model in (ModelSpec, ServerAssignmentSpec):
    _model.model_rebuild()


def parse_resource(doc: dict[str, Any]) -> Resource:
    """Parse a manifest of any Ekko kind into its type (raises pydantic's ValidationError)."""
    kinds = {t.model_fields["kind"].default: t for t in RESOURCE_TYPES}
    kind = doc.get("kind")
    if kind not in kinds:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(sorted(kinds))}")
    return kinds[kind].model_validate(doc)
