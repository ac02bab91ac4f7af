"""Certificates and kubeconfigs for the local control plane, made with the openssl CLI.

The openssl CLI is on every machine we run on, so the tooling needs no extra Python package.
ECDSA P-256 keys keep generation fast (a few ms each), which matters for a 20 s `up`. The PKI is
kept between runs and only made when missing, so a warm `up` skips it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLUSTER_NAME = "ekko-e2e"  # kubeconfig cluster and context name: the e2e context guard checks it
DAYS = "3650"


class PKIError(RuntimeError):
    pass


@dataclass(frozen=True)
class ClientCert:
    """A client identity for one component: CN is the user, O the group."""

    name: str
    common_name: str
    organization: str | None = None


CLIENTS = (
    ClientCert("admin", "ekko-admin", "system:masters"),
    ClientCert("kube-controller-manager", "system:kube-controller-manager"),
    ClientCert("kube-scheduler", "system:kube-scheduler"),
)
# Identities of the real node (e2e/cluster/realnode.py) and of the API server towards kubelets:
# the Node authorizer grants system:node:<name> in system:nodes its node's objects, the default
# system:node-proxier role is bound to system:kube-proxy, and the API server's kubelet client is
# bound to system:kubelet-api-admin by `up` (the kubelet authorises it by webhook).
APISERVER_KUBELET_CLIENT = ClientCert("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
KUBE_PROXY = ClientCert("kube-proxy", "system:kube-proxy")


def node_client(node: str) -> ClientCert:
    return ClientCert(f"kubelet-{node}", f"system:node:{node}", "system:nodes")


APISERVER_SANS = (
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
)


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise PKIError("openssl is not on PATH; install it (apt-get install openssl)")
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PKIError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def _key(path: Path) -> None:
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path.name,
        cwd=path.parent,
    )
    path.chmod(0o600)


def _signed(pki: Path, name: str, subject: str, extensions: str) -> None:
    """Make <name>.key and <name>.crt signed by the CA."""
    _key(pki / f"{name}.key")
    (pki / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        DAYS,
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=pki,
    )
    (pki / f"{name}.csr").unlink()
    (pki / f"{name}.ext").unlink()


def _sans(pki: Path) -> set[str]:
    proc = subprocess.run(
        ["openssl", "x509", "-in", str(pki / "apiserver.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=False,
    )
    text = proc.stdout.replace("IP Address:", "IP:")
    return {part.strip() for line in text.splitlines()[1:] for part in line.split(",")}


def _serving_cert(pki: Path, sans: str) -> None:
    _signed(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n",
    )


def client_cert(pki: Path, client: ClientCert) -> None:
    """Make <name>.crt/.key for a client identity signed by the CA, unless present."""
    if (pki / f"{client.name}.crt").exists() and (pki / f"{client.name}.key").exists():
        return
    subject = f"/CN={client.common_name}" + (
        f"/O={client.organization}" if client.organization else ""
    )
    _signed(
        pki,
        client.name,
        subject,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )


def ensure_pki(pki: Path, service_ip: str, host_ips: tuple[str, ...] = ()) -> None:
    """Create the CA, serving cert, client certs and service-account key pair if missing.

    ``host_ips`` are extra addresses the API server is reached at (the fixed host address pods
    and the kubelet use); a kept serving cert without them is re-signed with the same CA.
    """
    pki.mkdir(parents=True, exist_ok=True)
    marker = pki / ".complete"
    sans = ",".join((*APISERVER_SANS, f"IP:{service_ip}", *(f"IP:{ip}" for ip in host_ips)))
    if marker.exists():
        if not set(sans.split(",")) <= _sans(pki):
            _serving_cert(pki, sans)
        client_cert(pki, APISERVER_KUBELET_CLIENT)
        return
    _key(pki / "ca.key")
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=ekko-e2e-ca",
        "-days",
        DAYS,
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out",
        "ca.crt",
        cwd=pki,
    )
    _serving_cert(pki, sans)
    for client in (*CLIENTS, APISERVER_KUBELET_CLIENT):
        client_cert(pki, client)
    # Service-account tokens are signed by the apiserver and checked with the public key.
    _key(pki / "sa.key")
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    marker.write_text("")


def write_kubeconfig(path: Path, server: str, pki: Path, client: str) -> None:
    """A kubeconfig that refers to the cert files by absolute path (the state dir is local)."""
    user = f"{CLUSTER_NAME}-{client}"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: {CLUSTER_NAME}
  cluster:
    server: {server}
    certificate-authority: {pki / "ca.crt"}
users:
- name: {user}
  user:
    client-certificate: {pki / f"{client}.crt"}
    client-key: {pki / f"{client}.key"}
contexts:
- name: {CLUSTER_NAME}
  context:
    cluster: {CLUSTER_NAME}
    user: {user}
current-context: {CLUSTER_NAME}
"""
    )
    path.chmod(0o600)
