"""The validating admission webhook: TLS setup and the kopf handlers (glue only).

Off unless ``ekko operator --webhook-port`` is given. kopf serves the webhook and keeps a
ValidatingWebhookConfiguration named ``validate.ekko.dev`` pointing at it. Every handler ignores
its own failures (failurePolicy Ignore): the CRD schema and CEL rules stay the first line, and an
operator that is down must not block users from applying objects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ekko.api.meta import GROUP, VERSION
from ekko.api.resources import Model, ModelVersion
from ekko.kube.fleet import Fleet
from ekko.planning.admission import check_model, check_version

CONFIGURATION = "validate.ekko.dev"


@dataclass(frozen=True)
class Options:
    port: int
    host: str
    addr: str
    cert_dir: str | None


def self_signed(host: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed serving certificate for ``host`` (its own CA), valid for a year."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyfile.chmod(0o600)
    return certfile, keyfile


def configure(settings: kopf.OperatorSettings, options: Options) -> None:
    """Serve the webhook on addr:port, reachable by the API server as https://host:port."""
    directory = (
        Path(options.cert_dir)
        if options.cert_dir
        else Path(tempfile.mkdtemp(prefix="ekko-webhook-"))
    )
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    if not certfile.exists():
        certfile, keyfile = self_signed(options.host, directory)
    settings.admission.server = kopf.WebhookServer(
        addr=options.addr,
        port=options.port,
        host=options.host,
        certfile=str(certfile),
        pkeyfile=str(keyfile),
        cafile=str(certfile),
    )
    settings.admission.managed = CONFIGURATION


def _refuse(errors: list[str]) -> None:
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


@kopf.on.validate(GROUP, VERSION, "models", operations=["CREATE", "UPDATE"], ignore_failures=True)
async def validate_model(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    model = Model.model_validate(dict(body))
    fleet: Fleet = memo.fleet
    namespace = body.metadata.namespace or "default"
    pool = await asyncio.to_thread(fleet.get_pool, namespace, model.spec.pool)
    _refuse(check_model(model, pool))


@kopf.on.validate(GROUP, VERSION, "modelversions", operations=["CREATE"], ignore_failures=True)
async def validate_version(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    version = ModelVersion.model_validate(dict(body))
    fleet: Fleet = memo.fleet
    namespace = body.metadata.namespace or "default"
    model = await asyncio.to_thread(fleet.get_model, namespace, version.spec.model)
    _refuse(check_version(version, model))
