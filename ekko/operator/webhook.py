"""The validating admission webhook: TLS setup and the kopf handlers (glue only).

Off unless ``ekko operator --webhook-port`` is given. kopf serves the webhook and keeps a
ValidatingWebhookConfiguration named ``validate.ekko.dev`` pointing at it. Every handler ignores
its own failures (failurePolicy Ignore): the CRD schema and CEL rules stay the first line, and an
operator that is down must not block users from applying objects.

Every refusal is worded by :mod:`ekko.api.validate` (the field as the user wrote it, the value,
what would be accepted) or by :mod:`ekko.planning.admission`. When the webhook cannot check an
object (the pool is unreadable or itself invalid) it admits it with a warning, which kubectl
prints: the webhook only adds checks, it never blocks on its own trouble.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ekko.api.meta import GROUP, VERSION, Resource
from ekko.api.resources import Model, ModelVersion, UpdateStream
from ekko.api.validate import check_manifest
from ekko.kube.errors import KubeError
from ekko.kube.fleet import Fleet
from ekko.planning.admission import (
    check_assignment_write,
    check_model,
    check_stream,
    check_version,
)

CONFIGURATION = "validate.ekko.dev"

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Resource)


@dataclass(frozen=True)
class Options:
    port: int
    host: str
    addr: str
    cert_dir: str | None
    # False when the ValidatingWebhookConfiguration is someone else's (the Helm chart installs
    # one that calls the webhook Service, with the CA of the certificate it provides): kopf can
    # only register a URL, which an API server without cluster DNS cannot resolve.
    managed: bool = True


def self_signed(host: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed serving certificate for ``host`` (its own CA), valid for a year."""
    key = ec.generate_private_key(ec.SECP256R1())
    # X.509 caps a CN at 64 characters and `<release>-webhook.<namespace>.svc` can be longer
    # (startup then failed in a loop): the CN is short, the host name is in the SAN, which is
    # what TLS clients check.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ekko-webhook")])
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
    if options.managed:
        settings.admission.managed = CONFIGURATION


def webhooks(client_config: dict[str, Any], name_suffix: str = "ekko.dev") -> list[dict[str, Any]]:
    """The ``webhooks`` of a ValidatingWebhookConfiguration that calls every validator here, as
    kopf itself would register them (names, rules, failure policy), at ``client_config`` (a
    ``service`` or a ``url`` whose path each hook extends with its handler id). For an installer
    that registers the webhook itself (``--webhook-unmanaged``); the chart's template mirrors it
    and ``tests/test_chart.py`` holds the two equal."""
    from kopf._cogs.structs.references import Resource  # noqa: PLC0415
    from kopf._core.engines.admission import build_webhooks  # noqa: PLC0415

    from ekko.api.crdgen import CRDS  # noqa: PLC0415

    handlers = [
        h
        for h in kopf.get_default_registry()._webhooks.get_all_handlers()
        if h.fn.__module__ == __name__
    ]
    resources = [Resource(GROUP, VERSION, info.plural, namespaced=True) for info in CRDS]
    return build_webhooks(
        handlers,
        resources=resources,
        name_suffix=name_suffix,
        client_config=client_config,  # type: ignore[arg-type]
    )


def _refuse(errors: list[str]) -> None:
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)


def _parsed(kind: type[R], body: kopf.Body) -> R:
    """The object as its api type, or a refusal worded like the API server's own."""
    doc = dict(body)
    _refuse(check_manifest(doc))
    return kind.model_validate(doc)


_UNCHECKED: Any = object()
"""What _read returns when the referred object could not be read (the warning is given)."""


async def _read(what: str, warnings: list[str], read: Any, *args: str) -> Any:
    """Read the object a new one refers to; _UNCHECKED, with a warning, when it cannot."""
    try:
        return await asyncio.to_thread(read, *args)
    except KubeError as err:  # InvalidObjectError included: the worker reports that object
        log.warning("Admission could not read %s: %s", what, err)
        warnings.append(f"Ekko could not check this object against {what}: {err}")
        return _UNCHECKED


# Handler ids are the paths the API server calls. A Service reference (clientConfig.service, as
# the chart registers it) only takes RFC 1123 path segments: kopf's default id, the function's
# name, has an underscore and the API server refused the configuration.
@kopf.on.validate(
    GROUP,
    VERSION,
    "models",
    id="validate-model",
    operations=["CREATE", "UPDATE"],
    ignore_failures=True,
)
async def validate_model(body: kopf.Body, memo: kopf.Memo, warnings: list[str], **_: Any) -> None:
    model = _parsed(Model, body)
    fleet: Fleet = memo.fleet
    namespace = body.metadata.namespace or "default"
    pool = await _read(
        f'pool "{model.spec.pool}"', warnings, fleet.get_pool, namespace, model.spec.pool
    )
    if pool is not _UNCHECKED:
        _refuse(check_model(model, pool))


@kopf.on.validate(
    GROUP,
    VERSION,
    "modelversions",
    id="validate-version",
    operations=["CREATE"],
    ignore_failures=True,
)
async def validate_version(body: kopf.Body, memo: kopf.Memo, warnings: list[str], **_: Any) -> None:
    version = _parsed(ModelVersion, body)
    fleet: Fleet = memo.fleet
    namespace = body.metadata.namespace or "default"
    model = await _read(
        f'model "{version.spec.model}"', warnings, fleet.get_model, namespace, version.spec.model
    )
    if model is not _UNCHECKED:
        _refuse(check_version(version, model))


@kopf.on.validate(
    GROUP,
    VERSION,
    "updatestreams",
    id="validate-stream",
    operations=["CREATE", "UPDATE"],
    ignore_failures=True,
)
async def validate_stream(body: kopf.Body, memo: kopf.Memo, warnings: list[str], **_: Any) -> None:
    stream = _parsed(UpdateStream, body)
    fleet: Fleet = memo.fleet
    namespace = body.metadata.namespace or "default"
    model = await _read(
        f'model "{stream.spec.model}"', warnings, fleet.get_model, namespace, stream.spec.model
    )
    others = await _read(
        "the namespace's UpdateStreams", warnings, memo.streams.kube.streams, namespace
    )
    pool = None
    if model is not _UNCHECKED and model is not None:
        pool = await _read(
            f'pool "{model.spec.pool}"', warnings, fleet.get_pool, namespace, model.spec.pool
        )
    if model is not _UNCHECKED and others is not _UNCHECKED:
        _refuse(check_stream(stream, model, others, None if pool is _UNCHECKED else pool))


@kopf.on.validate(
    GROUP,
    VERSION,
    "serverassignments",
    id="validate-assignment",
    operations=["CREATE", "UPDATE"],
    ignore_failures=True,
)
async def validate_assignment(memo: kopf.Memo, userinfo: kopf.UserInfo, **kwargs: Any) -> None:
    """Assignment specs are the operator's alone (see ``check_assignment_write``)."""
    old: dict[str, Any] = dict(kwargs.get("old") or {})
    new: dict[str, Any] = dict(kwargs.get("new") or {})
    errors = check_assignment_write(
        str(kwargs.get("operation") or ""),
        old.get("spec"),
        new.get("spec"),
        str(userinfo.get("username", "")),
        memo.get("operator_user"),
    )
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=403)
