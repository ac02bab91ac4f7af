"""The one way Ekko connects to the Kubernetes API and the one place its errors are converted.

Every component (operator, agent, ``kubectl ekko``) gets its client from :func:`connect` and
reads and writes Ekko's objects through the typed helpers below; each helper turns the client's
exceptions into :mod:`ekko.kube.errors` with :func:`convert`, which keeps the API server's own
message (a 422 names the field and the rule) and names the object, not the Python function.
Callers catch ``NotFound`` / ``Conflict`` / ``ConfigError`` instead of checking status codes.

Connecting follows kubectl: an explicit kubeconfig (or a context) wins; otherwise the default
kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``) when it exists; otherwise the pod's service
account. The namespace is the context's, or the service account's, or ``default``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError
from urllib3.exceptions import HTTPError, MaxRetryError

from ekko.api.crdgen import CRDS
from ekko.api.meta import GROUP, VERSION
from ekko.api.validate import field_errors
from ekko.kube.errors import ConfigError, Conflict, InvalidObjectError, KubeError, NotFound

# -- errors ------------------------------------------------------------------------------------


def api_message(err: ApiException) -> str:
    """The Status message the API server sent (what kubectl prints), "" when it sent none."""
    try:
        body = json.loads(err.body) if err.body else {}
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or "")


def convert(err: BaseException, action: str) -> KubeError:
    """The ekko error for a failed client call: ``cannot <action>: HTTP <status> <reason>: <the
    API server's message>``; a 404 is :class:`NotFound`, a 409 :class:`Conflict`, a server that
    never answered has status 0. ``action`` names the object (``get Model ns/name``)."""
    if isinstance(err, KubeError):
        return err
    if isinstance(err, ApiException):
        status = int(err.status or 0)
        text = f"cannot {action}: HTTP {status} {err.reason or 'error'}".rstrip()
        message = api_message(err)
        if message:
            text += f": {message}"
        if status == 404:
            return NotFound(text, status)
        if status == 409:
            return Conflict(text, status)
        return KubeError(text, status)
    if isinstance(err, MaxRetryError):
        return KubeError(f"cannot {action}: the API server did not answer ({err.reason})")
    return KubeError(f"cannot {action}: {err}")


@contextlib.contextmanager
def converting(action: str) -> Iterator[None]:
    """Run client calls, raising what :func:`convert` makes of their errors (ekko errors pass
    through unchanged)."""
    try:
        yield
    except KubeError:
        raise
    except (ApiException, HTTPError, OSError) as err:
        raise convert(err, action) from err


# -- connecting --------------------------------------------------------------------------------

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

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


@dataclass(frozen=True)
class Connection:
    """A configured API client, the namespace its configuration names, and where both came
    from (for messages)."""

    api: CountingApiClient
    namespace: str
    source: str


def default_kubeconfig() -> str:
    """``$KUBECONFIG`` (possibly several files), else ``~/.kube/config``."""
    return os.environ.get("KUBECONFIG") or "~/.kube/config"


def _exists(kubeconfig: str) -> bool:
    return any(Path(p).expanduser().is_file() for p in kubeconfig.split(os.pathsep) if p)


def connect(
    kubeconfig: str | None = None, context: str | None = None, *, pool_size: int = 0
) -> Connection:
    """An API client (counting its requests) with room for ``pool_size`` connections at once
    (0: the client's default). Raises :class:`ConfigError` when there is nothing to connect
    with; nothing is called on the API server."""
    configuration = client.Configuration()
    if kubeconfig or context or _exists(default_kubeconfig()):
        path = kubeconfig or default_kubeconfig()
        namespace, name = _load_kubeconfig(path, context, configuration)
        source = f"kubeconfig {path}, context {name}"
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except (config.ConfigException, OSError) as err:
            raise ConfigError(
                f"cannot configure the Kubernetes client: no kubeconfig ({default_kubeconfig()})"
                f" and not in a cluster ({err}); set KUBECONFIG or --kubeconfig"
            ) from err
        namespace = _incluster_namespace()
        source = "in-cluster service account"
    if pool_size:
        configuration.connection_pool_maxsize = max(
            pool_size, configuration.connection_pool_maxsize or 0
        )
    return Connection(CountingApiClient(configuration), namespace, source)


def _load_kubeconfig(
    path: str, context: str | None, configuration: client.Configuration
) -> tuple[str, str]:
    """Load the kubeconfig's context into ``configuration``; its namespace and name."""
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, OSError, ValueError) as err:
        raise ConfigError(
            f"cannot configure the Kubernetes client from the kubeconfig {path}: {err}"
        ) from err
    chosen = active
    if context:
        chosen = next((c for c in contexts if c["name"] == context), None)
        if chosen is None:
            names = ", ".join(sorted(c["name"] for c in contexts)) or "none"
            raise ConfigError(
                f"cannot configure the Kubernetes client: context {context!r} is not in the"
                f" kubeconfig {path} (it has: {names})"
            )
    try:
        config.load_kube_config(
            config_file=path, context=context, client_configuration=configuration
        )
    except (config.ConfigException, OSError, ValueError) as err:
        raise ConfigError(
            f"cannot configure the Kubernetes client from the kubeconfig {path}: {err}"
        ) from err
    chosen = chosen or {}
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return str(namespace), str(chosen.get("name") or "?")


def _incluster_namespace() -> str:
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text().strip() or "default"
    except OSError:
        return "default"


# -- typed helpers for Ekko's objects ------------------------------------------------------------

KINDS: dict[str, str] = {info.plural: info.resource.__name__ for info in CRDS}
"""Plural → kind of Ekko's resources (how messages name an object)."""
PLURALS: dict[str, str] = {kind: plural for plural, kind in KINDS.items()}

M = TypeVar("M", bound=BaseModel)


def _named(plural: str, namespace: str, name: str) -> str:
    return f"{KINDS.get(plural, plural)} {namespace}/{name}"


def _plural(cls: type[BaseModel]) -> str:
    return PLURALS[cls.__name__]


def parse(cls: type[M], body: dict[str, Any]) -> M:
    """An api type from an object the API server returned; InvalidObjectError when it does not fit
    (the schema admitted it but the Python twin does not: reported on the object, not a crash)."""
    try:
        return cls.model_validate(body)
    except ValidationError as err:
        meta = body.get("metadata") or {}
        problems = "; ".join(field_errors(err)[:3])
        raise InvalidObjectError(
            str(body.get("kind") or cls.__name__),
            str(meta.get("namespace") or "default"),
            str(meta.get("name") or "?"),
            meta.get("uid"),
            problems,
        ) from err


def get_raw(custom: Any, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """One of Ekko's objects as the API server returns it; None when it does not exist."""
    try:
        with converting(f"get {_named(plural, namespace, name)}"):
            body: dict[str, Any] = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name
            )
    except NotFound:
        return None
    return body


def get_object(custom: Any, cls: type[M], namespace: str, name: str) -> M | None:
    """One of Ekko's objects as its api type; None when it does not exist, InvalidObjectError
    when the api type refuses it."""
    body = get_raw(custom, _plural(cls), namespace, name)
    return parse(cls, body) if body is not None else None


def list_raw(
    custom: Any, plural: str, namespace: str, *, label_selector: str | None = None
) -> list[dict[str, Any]]:
    """The namespace's objects of one of Ekko's kinds, as the API server returns them."""
    selector = {"label_selector": label_selector} if label_selector else {}
    kind = KINDS.get(plural, plural)
    try:
        with converting(f"list {kind} objects in {namespace}"):
            body = custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, **selector
            )
    except NotFound as err:
        # A list only 404s when the resource type is unknown.
        raise NotFound(
            f"cannot list {kind} objects in {namespace}: the Ekko CRDs ({GROUP}/{VERSION}) are not"
            " installed in this cluster"
        ) from err
    return list(body.get("items") or [])


def list_objects(
    custom: Any, cls: type[M], namespace: str, *, label_selector: str | None = None
) -> tuple[list[M], list[InvalidObjectError]]:
    """The namespace's objects of one kind that the api type accepts, and the ones it refuses
    (each to be reported on itself, never stopping the others)."""
    good: list[M] = []
    bad: list[InvalidObjectError] = []
    for item in list_raw(custom, _plural(cls), namespace, label_selector=label_selector):
        try:
            good.append(parse(cls, item))
        except InvalidObjectError as err:
            bad.append(err)
    return good, bad


def _manager(field_manager: str | None) -> dict[str, str]:
    return {"field_manager": field_manager} if field_manager else {}


def patch_object(
    custom: Any,
    plural: str,
    namespace: str,
    name: str,
    body: dict[str, Any],
    *,
    field_manager: str | None = None,
) -> None:
    """JSON-merge-patch an object of Ekko's (its metadata or spec). NotFound when it is gone."""
    with converting(f"patch {_named(plural, namespace, name)}"):
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, body, **_manager(field_manager)
        )


def patch_status(
    custom: Any,
    plural: str,
    namespace: str,
    name: str,
    status: dict[str, Any],
    *,
    resource_version: str | None = None,
    field_manager: str | None = None,
    timeout: float | None = None,
) -> None:
    """Merge-patch the status subresource; with ``resource_version``, only if the object is
    still at that version (Conflict otherwise). NotFound when it is gone."""
    body: dict[str, Any] = {"status": status}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    options: dict[str, Any] = _manager(field_manager)
    if timeout is not None:
        options["_request_timeout"] = timeout
    with converting(f"patch status of {_named(plural, namespace, name)}"):
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, body, **options
        )


APPLY_PATCH = "application/apply-patch+yaml"


def apply_status(
    custom: Any,
    plural: str,
    namespace: str,
    name: str,
    status: dict[str, Any],
    *,
    field_manager: str,
    force: bool = True,
    resource_version: str | None = None,
    stale: Sequence[str] = (),
) -> None:
    """Server-side apply of the status fields ``field_manager`` owns: the API server merges them
    with the fields of other managers and removes a field this manager sent before and leaves
    out now, so ``status`` must hold every field the manager owns. ``force`` takes fields over
    from other managers; without it, a field another manager set to a different value is a
    Conflict. With ``resource_version``, only if the object is still at that version (Conflict
    otherwise). NotFound when it is gone.

    ``stale``: status fields (wire names) to delete first, with a merge patch — fields the
    object has that ``status`` leaves out, which an apply removes only if this manager set them.
    An operator from before server-side apply wrote them with merge patches, under another
    manager (``ekko-operator``); a writer that is the only one of the status names them so a
    field it stopped sending (a finished pause's ``pausedUntil``) does not stay forever."""
    if stale and resource_version is not None:
        raise ValueError("a stale-field delete and a resourceVersion precondition do not combine")
    if stale:
        patch_status(
            custom,
            plural,
            namespace,
            name,
            dict.fromkeys(stale),
            field_manager=field_manager,
        )
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KINDS.get(plural, plural),
        "metadata": metadata,
        "status": status,
    }
    with converting(f"apply status of {_named(plural, namespace, name)} as {field_manager}"):
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            body,
            field_manager=field_manager,
            force=force,
            _content_type=APPLY_PATCH,
        )


def create_object(custom: Any, plural: str, namespace: str, body: dict[str, Any]) -> None:
    """Create an object of Ekko's. Conflict when it already exists."""
    name = str((body.get("metadata") or {}).get("name") or "?")
    with converting(f"create {_named(plural, namespace, name)}"):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def delete_object(custom: Any, plural: str, namespace: str, name: str) -> None:
    """Delete an object of Ekko's. NotFound when it is already gone."""
    with converting(f"delete {_named(plural, namespace, name)}"):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
