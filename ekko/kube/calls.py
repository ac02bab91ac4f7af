"""Small client calls every part of the Kubernetes layer makes the same way."""

from __future__ import annotations

import datetime as dt
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config
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


RequestKey = tuple[str, str]
"""(verb, resource): verb as in RBAC (get, list, watch, create, patch, delete), resource as in
RBAC too (``pods``, ``models/status``)."""


class CountingApiClient(client.ApiClient):
    """An ApiClient that counts its requests by verb and resource, for the operator's metrics
    (how many calls a pass costs is the first number to watch at fleet scale)."""

    def __init__(self, configuration: client.Configuration | None = None) -> None:
        super().__init__(configuration)
        self._counts_lock = threading.Lock()
        self.counts: dict[RequestKey, int] = {}

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        key = request_key(method, url)
        with self._counts_lock:
            self.counts[key] = self.counts.get(key, 0) + 1
        return super().call_api(method, url, *args, **kwargs)

    def snapshot(self) -> dict[RequestKey, int]:
        with self._counts_lock:
            return dict(self.counts)


def request_key(method: str, url: str) -> RequestKey:
    """The RBAC verb and resource of a request URL."""
    parsed = urllib.parse.urlsplit(url)
    parts = [p for p in parsed.path.split("/") if p]
    # /api/v1/... or /apis/<group>/<version>/...
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]  # a namespaced resource (a bare /namespaces/<ns> is the namespace itself)
    resource = rest[0] if rest else "?"
    named = len(rest) >= 2
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    query = urllib.parse.parse_qs(parsed.query)
    verb = {
        "GET": "get" if named else "list",
        "POST": "create",
        "PATCH": "patch",
        "PUT": "update",
        "DELETE": "delete",
    }.get(method.upper(), method.lower())
    if verb == "list" and query.get("watch", [""])[0] in ("true", "1"):
        verb = "watch"
    return verb, resource


def new_client(kubeconfig: str | None = None, pool_size: int = 0) -> CountingApiClient:
    """An API client from a kubeconfig, or from the pod's service account in a cluster, with
    room for ``pool_size`` connections at once (0: the client's default)."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    if pool_size:
        configuration.connection_pool_maxsize = max(
            pool_size, configuration.connection_pool_maxsize or 0
        )
    return CountingApiClient(configuration)
