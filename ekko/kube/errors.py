"""Errors of the Kubernetes layer, free of the client library's types.

One hierarchy for every caller (operator, agent, ``kubectl ekko``): ``ekko.kube.client.convert``
turns the client's exceptions into these, keeping the API server's own message and naming the
object, so callers catch a subclass (``except NotFound``) instead of checking status codes.
"""

from __future__ import annotations


class KubeError(RuntimeError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when it never answered)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):  # noqa: N818 (the API server's own reason name)
    """The object (or, for a list, the resource type) does not exist: HTTP 404."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message, status)


class Conflict(KubeError):  # noqa: N818 (the API server's own reason name)
    """Someone wrote first: the object already exists, or a resourceVersion precondition
    failed (HTTP 409). Re-read and decide again."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message, status)


class ConfigError(KubeError):
    """No usable kubeconfig, context or in-cluster service account: nothing was called."""


class InvalidObjectError(KubeError):
    """An object the API server stored but Ekko cannot use (its body fails the api types, e.g.
    written while the webhook was down). Not retriable until the object changes: report it on
    the object and leave it out, never let it stop the objects next to it."""

    def __init__(self, kind: str, namespace: str, name: str, uid: str | None, problem: str) -> None:
        super().__init__(f"{kind} {namespace}/{name} is invalid: {problem}", 422)
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.problem = problem
        self.pool = ""
        """For a Model: the pool its spec names, when it could be read."""
