"""The Kubernetes I/O of ``kubectl ekko``: read models, versions and servers; write requests.

The only plugin module that imports the Kubernetes client. Every call turns the client's errors
into :class:`~ekko.kube.errors.KubeError` with a message a user can act on (the API server's own
words for a refusal, the address for a server that does not answer).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError, MaxRetryError

from ekko.api.meta import GROUP, VERSION
from ekko.api.resources import Model, ModelVersion, ServerAssignment
from ekko.kube import pods
from ekko.kube.calls import get_custom
from ekko.kube.errors import KubeError

FIELD_MANAGER = "kubectl-ekko"

P = ParamSpec("P")
R = TypeVar("R")


def _api_message(err: ApiException) -> str:
    """The Status message the API server sent (what kubectl prints), else the HTTP reason."""
    try:
        body = json.loads(err.body) if err.body else {}
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or err.reason or "error")


def converted(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn the client's exceptions into KubeError: ``cannot <what>: <the server's reason>``."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except ApiException as err:
                if err.status == 404 and what.startswith("list"):
                    # A list only 404s when the resource type is unknown.
                    raise KubeError(
                        f"cannot {what}: the Ekko CRDs (ekko.dev/{VERSION}) are not installed in"
                        " this cluster",
                        404,
                    ) from err
                raise KubeError(f"cannot {what}: {_api_message(err)}", err.status or 0) from err
            except MaxRetryError as err:
                raise KubeError(
                    f"cannot {what}: the API server did not answer ({err.reason})"
                ) from err
            except (HTTPError, OSError) as err:
                raise KubeError(f"cannot {what}: {err}") from err

        return wrapper

    return wrap


def connect(
    kubeconfig: str | None = None, context: str | None = None
) -> tuple[client.ApiClient, str]:
    """An API client from the kubeconfig (or the pod's service account) and its namespace.

    The namespace is the context's, or ``default``, as kubectl chooses it.
    """
    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError) as err:
        if kubeconfig or context:
            raise KubeError(f"cannot read the kubeconfig: {err}") from err
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise KubeError(
                f"no kubeconfig and not in a cluster: {err}; set KUBECONFIG or --kubeconfig"
            ) from err
        return client.ApiClient(), _incluster_namespace()
    chosen = active
    if context:
        chosen = next((c for c in contexts if c["name"] == context), None)
        if chosen is None:
            names = ", ".join(sorted(c["name"] for c in contexts)) or "none"
            raise KubeError(f"context {context!r} is not in the kubeconfig (it has: {names})")
    try:
        api = config.new_client_from_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, OSError, ValueError) as err:
        raise KubeError(f"cannot use the kubeconfig: {err}") from err
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    return api, namespace


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


class RolloutClient:
    """Reads the objects a rollout command needs and writes its requests."""

    def __init__(self, api: client.ApiClient) -> None:
        # Typed as Any: the client's annotations disagree with the dict bodies it accepts.
        self.custom: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)

    def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return get_custom(self.custom, plural, namespace, name)

    @converted("read the model")
    def get_model(self, namespace: str, name: str) -> Model | None:
        body = self._get("models", namespace, name)
        return Model.model_validate(body) if body is not None else None

    @converted("list models")
    def list_models(self, namespace: str) -> list[Model]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "models")
        return [Model.model_validate(i) for i in items["items"]]

    @converted("list model versions")
    def list_versions(self, namespace: str) -> list[ModelVersion]:
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "modelversions"
        )
        return [ModelVersion.model_validate(i) for i in items["items"]]

    @converted("read the model version")
    def get_version(self, namespace: str, name: str) -> ModelVersion | None:
        body = self._get("modelversions", namespace, name)
        return ModelVersion.model_validate(body) if body is not None else None

    @converted("list the model's servers")
    def model_servers(
        self, namespace: str, model: str, pool: str
    ) -> list[tuple[ServerAssignment, bool]]:
        """Assignments of the pool's servers that hold the model, with whether the pod serves."""
        return pods.model_servers(self.core, self.custom, namespace, model, pool)

    @converted("write the request annotations")
    def annotate_version(
        self, namespace: str, name: str, annotations: dict[str, str | None]
    ) -> None:
        """Merge-patch the ModelVersion's annotations (None removes one); never the spec."""
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "modelversions",
            name,
            {"metadata": {"annotations": annotations}},
            field_manager=FIELD_MANAGER,
        )

    @converted("patch the model's routing")
    def patch_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch fields of the Model's status subresource."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            "models",
            name,
            {"status": status},
            field_manager=FIELD_MANAGER,
        )
