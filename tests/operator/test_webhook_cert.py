"""The webhook's self-signed certificate works for long in-cluster service names."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from ekko.operator.webhook import self_signed


def test_a_long_service_name_goes_in_the_san_and_the_certificate_is_made(tmp_path: Path) -> None:
    host = "a-rather-long-release-name-webhook.a-long-namespace-for-ml-serving.svc"
    assert len(host) > 64  # over X.509's CN limit: issuing it as the CN raised
    cert_path, key_path = self_signed(host, tmp_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [host]
    assert key_path.stat().st_size > 0
