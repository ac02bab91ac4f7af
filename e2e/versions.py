"""Every version of every tool the local control plane uses, pinned in one place.

Changing a version here is enough: the build cache is keyed by component and version, so the
next ``python -m e2e.cluster build`` builds the new one next to the old.
"""

from __future__ import annotations

# Kubernetes control plane and kubectl, built from the k8s.io/kubernetes Go module.
# Fallback if this tag ever disappears from the Go proxy: v1.35.4 (29 staging modules).
KUBERNETES = "v1.36.3"
ETCD = "v3.6.16"  # go.etcd.io/etcd/server/v3
KWOK = "v0.8.0"  # sigs.k8s.io/kwok
HELM = "v3.21.4"  # helm.sh/helm/v3
# github.com/prometheus/prometheus: Prometheus 3.16.0 (the module is tagged v0.3XX.Y for v3.XX.Y);
# optional, for the real-node tests' Kubernetes service discovery.
PROMETHEUS = "v0.316.0"


def staging_version(kubernetes: str = KUBERNETES) -> str:
    """The published version of the staging modules (k8s.io/api, ...) for a Kubernetes tag.

    Kubernetes v1.X.Y publishes its staging modules as v0.X.Y.
    """
    major, minor, patch = kubernetes.lstrip("v").split(".")
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {kubernetes}")
    return f"v0.{minor}.{patch}"
