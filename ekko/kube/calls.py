"""Client calls that are not one of Ekko's objects: events, and raw requests for the cache."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
from collections.abc import Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ekko.api.meta import GROUP, VERSION
from ekko.kube.client import converting


def whoami(api: client.ApiClient) -> str | None:
    """The user name the API server knows these credentials by (a SelfSubjectReview, which
    every authenticated user may make); None when the server cannot say."""
    try:
        review: Any = client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
    except (ApiException, OSError, ValueError):
        return None
    user = getattr(getattr(review, "status", None), "user_info", None)
    name = getattr(user, "username", None)
    return str(name) if name else None


def may(api: client.ApiClient, verb: str, group: str, resource: str) -> bool:
    """Whether these credentials may ``verb`` the cluster-scoped ``resource`` (a
    SelfSubjectAccessReview; True when the server cannot say, so a check never blocks alone)."""
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, group=group, resource=resource
            )
        )
    )
    try:
        answer: Any = client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    except (ApiException, OSError, ValueError):
        return True
    return bool(answer.status.allowed)


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
    with converting(f"post an event on {kind} {namespace}/{name}"):
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


class Response:
    """A raw response: the body's bytes (``data``), or a stream of chunks for a watch."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    @property
    def data(self) -> bytes:
        return bytes(self._raw.data)

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from self._raw.stream(amt, decode_content=decode_content)

    def close(self) -> None:
        self._raw.close()

    def interrupt(self) -> None:
        """Make a read in progress in another thread return now.

        ``close()`` cannot: it waits for the buffered reader's lock, which the reading thread
        holds until data or the watch's timeout arrives (a minute), so stopping a cache of seven
        informers that way took minutes. Shutting the socket down needs no lock: the blocked
        ``recv`` returns at once and the reader sees the stream end.
        """
        conn = getattr(self._raw, "connection", None)
        sock = getattr(conn, "sock", None)
        if sock is None:
            return
        # socket.socket's own shutdown: an SSLSocket's would also drop its TLS state under the
        # reading thread's feet. It may already be closed by the server or the reader.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def release_conn(self) -> None:
        self._raw.release_conn()


def call_raw(
    api: client.ApiClient,
    method: str,
    path: str,
    query: list[tuple[str, Any]],
    *,
    stream: bool = False,
    timeout: float = 60.0,
) -> Response:
    """One request whose JSON the caller parses itself: lists and watches of the cache, where
    deserialising into the client's model classes would cost more than the request.

    Raises the client's ApiException on a non-2xx answer (404, 410, 403 ...)."""
    method, url, headers, _, _ = api.param_serialize(
        method,
        path,
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    answer = api.call_api(method, url, header_params=headers, _request_timeout=(10.0, timeout))
    if not 200 <= answer.status <= 299:
        answer.read()
        raise ApiException(http_resp=answer)
    if not stream:
        answer.read()
    return Response(answer.response)
