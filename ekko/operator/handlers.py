"""kopf handlers and cache listeners: glue only. Each turns an event into wake-ups.

The pool workers read pools, models, versions, pods, assignments and nodes from the operator's
cache (``ekko.kube.cache``) and are woken by the cache itself, after it stored the change: woken
by kopf's own watch, a pass could read the cache before the event reached it and miss the change.
kopf's handlers wake the rollout and stream workers, which read the API.

Event handlers (``on.event``) keep no state in the objects (no finalizers, no progress
annotations): the workers re-read the cluster on every pass, so a missed or repeated event is
harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from ekko.api.meta import GROUP, VERSION
from ekko.kube.calls import may, whoami
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
    options = memo.get("webhook")
    if options is not None and options.managed:
        # kopf registers the webhook itself and stops the whole operator, at a moment of its
        # choosing, when it may not: say so now, with the fix.
        missing = [
            f"{verb} {resource}"
            for resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations")
            for verb in ("create", "patch")
            if not await asyncio.to_thread(
                may, memo.fleet.custom.api_client, verb, "admissionregistration.k8s.io", resource
            )
        ]
        if missing:
            raise kopf.PermanentError(
                "--webhook-port registers the webhook itself, which needs "
                + ", ".join(missing)
                + " (admissionregistration.k8s.io, cluster-wide); grant them, or register the "
                "webhook yourself and pass --webhook-unmanaged (the Helm chart does)"
            )
    if options is not None:
        # The webhook lets only this user write ServerAssignment specs (the operator itself;
        # hot standbys share its ServiceAccount).
        memo.operator_user = await asyncio.to_thread(whoami, memo.fleet.custom.api_client)
        if memo.operator_user is None:
            logger.warning(
                "Could not learn this operator's user name (SelfSubjectReview); the webhook "
                "will not guard ServerAssignment specs."
            )
        else:
            logger.info("ServerAssignment specs are written by %s only.", memo.operator_user)
    # Stream freshness comes from Prometheus only when one was named (--prometheus-url); the
    # rollouts' default address is a guess that would turn every status pass into a warning.
    memo.streams = UpdateStreams(
        UpdateKube(memo.fleet.custom.api_client, memo.cache),
        memo.workers.gate,
        os.environ.get("EKKO_PROMETHEUS_URL") or None,
        memo.rollouts.auth,
    )
    loop = asyncio.get_running_loop()
    memo.cache.listen(
        lambda kind, event, old, new: loop.call_soon_threadsafe(
            cache_event, memo, kind, event, old, new
        )
    )
    memo.cache.start()
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


def cache_event(
    memo: kopf.Memo, kind: str, event: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    """A change the cache stored (on the event loop): wake the workers it concerns."""
    if kind == "updatestreams":
        # kopf wakes a stream's own worker; a stream added, deleted or moved to another model
        # may settle which stream of a model is the one (one stream per model).
        if event != "MODIFIED" or (old or {}).get("spec") != (new or {}).get("spec"):
            body = new if new is not None else old
            memo.streams.wake_namespace(str(((body or {}).get("metadata") or {}).get("namespace")))
        return
    if not memo.workers.cache_event(kind, event, old, new):
        return  # a heartbeat, or a node's status that left it as ready as it was
    body = new if new is not None else old
    namespace = str(((body or {}).get("metadata") or {}).get("namespace") or "")
    if kind in ("pods", "serverassignments"):
        memo.streams.wake_namespace(namespace)  # a server lost or ready, an address: re-wire
    if kind == "serverassignments":
        # Agents report loads and applied routing here: rollouts waiting on them look again.
        memo.rollouts.wake_model(namespace)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
    cache = memo.get("cache")
    if cache is not None:
        cache.stop()
    for name in ("workers", "rollouts", "streams"):
        group = memo.get(name)
        if group is not None:
            await group.stop()
    fleet = memo.get("fleet")
    if fleet is not None:
        fleet.close()  # its write threads
    executor = memo.get("executor")
    if executor is not None:
        # Idle solver threads would otherwise keep the process alive after kopf stops.
        executor.shutdown(wait=False, cancel_futures=True)


@kopf.on.event(GROUP, VERSION, "modelversions")
async def version_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.rollouts.wake(body.metadata.namespace, body.metadata.name)


@kopf.on.event(GROUP, VERSION, "models")
async def model_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.rollouts.wake_model(body.metadata.namespace, body.metadata.name)


@kopf.on.event(GROUP, VERSION, "updatestreams")
async def stream_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # Created, changed or deleted: the stream's worker re-reads it (and removes its duties when
    # it is gone); status writes wake it too, which costs one idempotent pass.
    memo.streams.wake(body.metadata.namespace, body.metadata.name)
