"""The agent's Kubernetes I/O: read and watch its ServerAssignment and the namespace's Models,
patch the assignment's status.

This is the only agent module that imports ``kubernetes``; it connects and converts errors with
:mod:`ekko.kube.client` like every other component. The client is synchronous, so the agent runs
each watch in a thread and calls :meth:`AgentKube.patch_status` from a worker thread; client
errors come out as :class:`~ekko.kube.errors.KubeError` (and its subclasses), never as
``ApiException``.

Watches are list-then-watch loops that never give up: on expiry (HTTP 410 Gone) they list again
and hand the whole list to ``on_relist``; on a dropped connection they resume from the last
resourceVersion seen (bookmarks included) after a short backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Final, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from ekko.api.meta import GROUP, VERSION
from ekko.kube.client import connect, convert, patch_status
from ekko.kube.errors import KubeError

log = logging.getLogger("ekko.agent.kube")

ASSIGNMENTS: Final = "serverassignments"
MODELS: Final = "models"

EventHandler = Callable[[str, dict[str, Any]], None]
"""Called from the watch thread with (ADDED|MODIFIED|DELETED, object)."""
RelistHandler = Callable[[list[dict[str, Any]]], None]
"""Called from the watch thread with every object after a (re)list."""


class AgentKube:
    """The calls one agent makes, for one pod's assignment in one namespace."""

    def __init__(self, namespace: str, pod_name: str, kubeconfig: str | None = None) -> None:
        self.namespace = namespace
        self.pod_name = pod_name
        self._api = connect(kubeconfig).api  # ConfigError when there is nothing to connect with
        self._custom = client.CustomObjectsApi(self._api)

    def close(self) -> None:
        self._api.close()

    # -- writes -------------------------------------------------------------------------------

    def patch_status(self, status: dict[str, Any], timeout: float = 10.0) -> None:
        """Merge-patch the assignment's status subresource with these (camelCase) fields;
        NotFound when the assignment is gone, KubeError for anything else."""
        try:
            patch_status(
                self._custom, ASSIGNMENTS, self.namespace, self.pod_name, status, timeout=timeout
            )
        except KubeError:
            raise
        except Exception as err:  # the status writer retries KubeError; nothing may end it
            where = f"{self.namespace}/{self.pod_name}"
            raise convert(err, f"patch status of ServerAssignment {where}") from err

    def pod_uid(self, timeout: float = 10.0) -> str | None:
        """The UID of the pod that has this agent's name now, None when there is none."""
        where = f"{self.namespace}/{self.pod_name}"
        try:
            pod: Any = client.CoreV1Api(self._api).read_namespaced_pod(
                self.pod_name, self.namespace, _request_timeout=timeout
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise convert(err, f"read Pod {where}") from err
        except Exception as err:
            raise convert(err, f"read Pod {where}") from err
        return str(pod.metadata.uid or "")

    # -- watches ------------------------------------------------------------------------------

    def watch_assignment(
        self, on_relist: RelistHandler, on_event: EventHandler, stop: threading.Event
    ) -> None:
        """Watch this pod's ServerAssignment until ``stop`` is set (blocks; run it in a thread)."""
        self._watch_forever(
            ASSIGNMENTS,
            field_selector=f"metadata.name={self.pod_name}",
            on_relist=on_relist,
            on_event=on_event,
            stop=stop,
        )

    def watch_models(
        self, on_relist: RelistHandler, on_event: EventHandler, stop: threading.Event
    ) -> None:
        """Watch every Model of the namespace until ``stop`` is set (blocks; run it in a thread)."""
        self._watch_forever(
            MODELS, field_selector=None, on_relist=on_relist, on_event=on_event, stop=stop
        )

    def _watch_forever(
        self,
        plural: str,
        *,
        field_selector: str | None,
        on_relist: RelistHandler,
        on_event: EventHandler,
        stop: threading.Event,
        timeout_seconds: int = 300,
    ) -> None:
        selector: dict[str, Any] = {"field_selector": field_selector} if field_selector else {}
        resource_version: str | None = None
        delay = 0.5
        while not stop.is_set():
            try:
                if resource_version is None:
                    listing = cast(
                        dict[str, Any],
                        self._custom.list_namespaced_custom_object(
                            GROUP, VERSION, self.namespace, plural, _request_timeout=30, **selector
                        ),
                    )
                    resource_version = listing["metadata"]["resourceVersion"]
                    on_relist(list(listing.get("items") or []))
                stream = watch.Watch()
                for event in stream.stream(
                    self._custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    plural,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=timeout_seconds,
                    # A silent connection is dead after the server-side timeout plus slack.
                    _request_timeout=(10, timeout_seconds + 30),
                    **selector,
                ):
                    obj = event.get("raw_object") or event.get("object") or {}
                    resource_version = (obj.get("metadata") or {}).get(
                        "resourceVersion", resource_version
                    )
                    kind = event.get("type", "")
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(kind, obj)
                    if stop.is_set():
                        stream.stop()
                        break
                delay = 0.5
            except ApiException as err:
                if err.status == 410:
                    log.info("watch of %s in %s expired; relisting", plural, self.namespace)
                    resource_version = None
                    continue
                failed = convert(err, f"watch {plural} in {self.namespace}")
                log.warning("%s", failed)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception as err:  # the watch must survive any connection trouble
                log.warning("watch of %s in %s broke: %s", plural, self.namespace, err)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
