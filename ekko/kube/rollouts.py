"""The Kubernetes I/O of ``kubectl ekko``: read models, versions and servers; write requests.

Every call goes through :mod:`ekko.kube.client`, so its errors are
:class:`~ekko.kube.errors.KubeError` with a message a user can act on (the API server's own
words for a refusal, the address for a server that does not answer).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from ekko.api.resources import Model, ModelVersion, ServerAssignment
from ekko.kube import pods
from ekko.kube.client import (
    apply_status,
    get_object,
    list_objects,
    patch_object,
    patch_status,
)

FIELD_MANAGER = "kubectl-ekko"


class RolloutClient:
    """Reads the objects a rollout command needs and writes its requests."""

    def __init__(self, api: client.ApiClient) -> None:
        # Typed as Any: the client's annotations disagree with the dict bodies it accepts.
        self.custom: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)

    def get_model(self, namespace: str, name: str) -> Model | None:
        return get_object(self.custom, Model, namespace, name)

    def list_models(self, namespace: str) -> list[Model]:
        """The namespace's models; the first one the api types refuse is the error."""
        good, bad = list_objects(self.custom, Model, namespace)
        if bad:
            raise bad[0]
        return good

    def list_versions(self, namespace: str) -> list[ModelVersion]:
        """The namespace's model versions; the first one the api types refuse is the error."""
        good, bad = list_objects(self.custom, ModelVersion, namespace)
        if bad:
            raise bad[0]
        return good

    def get_version(self, namespace: str, name: str) -> ModelVersion | None:
        return get_object(self.custom, ModelVersion, namespace, name)

    def model_servers(
        self, namespace: str, model: str, pool: str
    ) -> list[tuple[ServerAssignment, bool]]:
        """Assignments of the pool's servers that hold the model, with whether the pod serves."""
        return pods.model_servers(self.core, self.custom, namespace, model, pool)

    def annotate_version(
        self, namespace: str, name: str, annotations: dict[str, str | None]
    ) -> None:
        """Merge-patch the ModelVersion's annotations (None removes one); never the spec."""
        body = {"metadata": {"annotations": annotations}}
        patch_object(
            self.custom, "modelversions", namespace, name, body, field_manager=FIELD_MANAGER
        )

    def apply_model_routing(self, namespace: str, name: str, routing: dict[str, Any]) -> None:
        """Set the Model's routing (``weights``, ``canaryWeight``) with a server-side apply under
        ``kubectl-ekko``, taking the fields over from the rollout worker: a rollback that does
        not wait for the operator. The rollout worker's next write is made only onto a Model
        that has not changed since it read it, so it never undoes this one."""
        apply_status(
            self.custom, "models", namespace, name, routing, field_manager=FIELD_MANAGER, force=True
        )

    def patch_model_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch fields of the Model's status subresource (the update stream's control
        block, which the state manager writes the same way)."""
        patch_status(self.custom, "models", namespace, name, status, field_manager=FIELD_MANAGER)
