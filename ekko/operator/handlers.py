"""kopf handlers: glue only. Each turns an event into a wake-up of the pool worker concerned.

Event handlers (``on.event``) keep no state in the objects (no finalizers, no progress
annotations): the workers re-read the cluster on every pass, so a missed or repeated event is
harmless.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from ekko.api.meta import GROUP, VERSION
from ekko.kube.updates import UpdateKube
from ekko.operator.settings import configure
from ekko.operator.updates import UpdateStreams

POOL_LABEL = f"{GROUP}/pool"


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    configure(settings, memo)
    memo.streams = UpdateStreams(UpdateKube(memo.fleet.custom.api_client), memo.workers.gate)
    memo.resync = asyncio.get_running_loop().create_task(resync(memo), name="resync")
    logger.info("Ekko operator started.")


RESYNC_SECONDS = 60.0


async def resync(memo: kopf.Memo) -> None:
    """Wake every known pool and rollout worker once a minute, as informers resync: a pass that
    finds nothing to do costs a few reads, and one missed event can never strand a pool (after
    an API-server restart, watch events were lost and a pool stayed half-converged)."""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        try:
            memo.workers.wake_all()
            memo.rollouts.wake_all()
        except Exception:  # never let the resync die; the next round tries again
            logging.getLogger("ekko.operator").exception("Resync failed.")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
    for name in ("workers", "rollouts", "streams"):
        group = memo.get(name)
        if group is not None:
            await group.stop()
    executor = memo.get("executor")
    if executor is not None:
        # Idle solver threads would otherwise keep the process alive after kopf stops.
        executor.shutdown(wait=False, cancel_futures=True)


@kopf.on.event(GROUP, VERSION, "serverpools")
async def pool_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.workers.pool_changed(
        body.metadata.namespace,
        body.metadata.name,
        body.metadata.get("generation"),
        deleted=event["type"] == "DELETED",
    )


@kopf.on.event(GROUP, VERSION, "modelversions")
async def version_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.rollouts.wake(body.metadata.namespace, body.metadata.name)


@kopf.on.event(GROUP, VERSION, "models")
async def model_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.rollouts.wake_model(body.metadata.namespace, body.metadata.name)
    memo.workers.model_changed(
        body.metadata.namespace,
        body.metadata.name,
        body.spec.get("pool"),
        body.metadata.get("generation"),
        deleted=event["type"] == "DELETED",
    )


@kopf.on.event(GROUP, VERSION, "serverassignments")
async def assignment_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    # Agents heartbeat every few seconds; only a change in what they hold or apply matters.
    if not memo.workers.assignment_changed(body, deleted=event["type"] == "DELETED"):
        return
    memo.streams.wake_namespace(body.metadata.namespace)  # an agent's update address, a move
    pool = body.spec.get("pool")
    if pool:
        memo.workers.wake(body.metadata.namespace, pool)
    # Agents report loads and applied routing here: rollouts waiting on them look again.
    memo.rollouts.wake_model(body.metadata.namespace)


@kopf.on.event("", "v1", "pods", labels={POOL_LABEL: kopf.PRESENT})
async def pod_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.workers.wake(body.metadata.namespace, body.metadata.labels[POOL_LABEL])
    memo.streams.wake_namespace(body.metadata.namespace)  # a server lost or ready: re-wire


@kopf.on.event(GROUP, VERSION, "updatestreams")
async def stream_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # Created, changed or deleted: the stream's worker re-reads it (and removes its duties when
    # it is gone); status writes wake it too, which costs one idempotent pass.
    memo.streams.wake(body.metadata.namespace, body.metadata.name)


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    # A node lost or back changes which servers are alive; readiness flaps are cheap to recheck.
    if event["type"] in ("DELETED", "ADDED"):
        memo.workers.wake_all()
