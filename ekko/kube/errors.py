"""Errors of the Kubernetes layer, free of the client library's types."""

from __future__ import annotations


class KubeError(RuntimeError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when it never answered)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409
