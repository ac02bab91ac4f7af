"""Small client calls every part of the Kubernetes layer makes the same way."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ekko.api.meta import GROUP, VERSION


def get_custom(custom: Any, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """One of Ekko's objects as the API server returns it; None when it does not exist."""
    try:
        body: dict[str, Any] = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return body


def post_event(
    core: Any,
    kind: str,
    namespace: str,
    name: str,
    *,
    uid: str | None,
    reason: str,
    message: str,
    warning: bool = False,
) -> None:
    """A Kubernetes event on one of Ekko's objects (short, past tense, names the object)."""
    now = dt.datetime.now(dt.UTC)
    core.create_namespaced_event(
        namespace,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=kind,
                name=name,
                namespace=namespace,
                uid=uid,
            ),
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="ekko-operator"),
        ),
    )
