"""Errors of the Kubernetes layer, free of the client library's types."""

from __future__ import annotations


class KubeError(RuntimeError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when it never answered)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


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
