"""The agent's Kubernetes I/O: read and watch its ServerAssignment and the namespace's Models,
patch the assignment's status.

This is the only agent module that imports ``kubernetes``. The client is synchronous, so the
agent runs each watch in a thread and calls :meth:`AgentKube.patch_status` from a worker thread;
client errors come out as :class:`KubeError` (and its subclasses), never as ``ApiException``.

Watches are list-then-watch loops that never give up: on expiry (HTTP 410 Gone) they list again
and hand the whole list to ``on_relist``; on a dropped connection they resume from the last
resourceVersion seen (bookmarks included) after a short backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Final, cast

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from ekko.api.meta import GROUP, VERSION

log = logging.getLogger("ekko.agent.kube")

ASSIGNMENTS: Final = "serverassignments"
MODELS: Final = "models"

EventHandler = Callable[[str, dict[str, Any]], None]
"""Called from the watch thread with (ADDED|MODIFIED|DELETED, object)."""
RelistHandler = Callable[[list[dict[str, Any]]], None]
"""Called from the watch thread with every object after a (re)list."""


class KubeError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when none was received)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFoundError(KubeError):
    """The object does not exist (HTTP 404)."""


class ConfigError(KubeError):
    """No usable kubeconfig or in-cluster configuration."""


def _convert(err: ApiException, what: str) -> KubeError:
    status = int(err.status or 0)
    reason = err.reason or "error"
    if status == 404:
        return NotFoundError(f"{what}: not found", status)
    return KubeError(f"{what}: HTTP {status} {reason}", status)


class AgentKube:
    """The calls one agent makes, for one pod's assignment in one namespace."""

    def __init__(self, namespace: str, pod_name: str, kubeconfig: str | None = None) -> None:
        self.namespace = namespace
        self.pod_name = pod_name
        try:
            if kubeconfig:
                api = config.new_client_from_config(config_file=kubeconfig)
            else:
                config.load_incluster_config()
                api = client.ApiClient()
        except (config.ConfigException, OSError) as err:
            where = kubeconfig or "in-cluster service account"
            raise ConfigError(
                f"cannot configure the Kubernetes client from {where}: {err}"
            ) from err
        self._api = api
        self._custom = client.CustomObjectsApi(api)

    def close(self) -> None:
        self._api.close()

    # -- writes -------------------------------------------------------------------------------

    def patch_status(self, status: dict[str, Any], timeout: float = 10.0) -> None:
        """Merge-patch the assignment's status subresource with these (camelCase) fields."""
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                ASSIGNMENTS,
                self.pod_name,
                {"status": status},
                _request_timeout=timeout,
            )
        except ApiException as err:
            raise _convert(err, f"patch status of ServerAssignment {self._where()}") from err
        except Exception as err:  # urllib3 and socket errors: the API server is unreachable
            raise KubeError(f"patch status of ServerAssignment {self._where()}: {err}") from err

    def _where(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

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
                log.warning(
                    "watch of %s in %s failed: %s", plural, self.namespace, _convert(err, plural)
                )
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception as err:  # the watch must survive any connection trouble
                log.warning("watch of %s in %s broke: %s", plural, self.namespace, err)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
