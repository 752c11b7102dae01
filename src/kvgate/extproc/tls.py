"""A self-signed certificate for ``--secure-serving``, made at start-up as GIE's EPP does.

Envoy's ext_proc cluster in GIE deployments uses TLS without verifying the peer, so any
certificate works; ``--cert-path DIR`` (tls.crt, tls.key) supplies a real one instead.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from kvgate.errors import KvgateError


def self_signed(hostnames: tuple[str, ...] = ("localhost",)) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) valid for ten years, EC P-256."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise KvgateError(
            "--secure-serving needs the 'cryptography' package: pip install 'kvgate[extproc]'"
        ) from exc
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvgate")])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def load_or_generate(cert_path: str | None) -> tuple[bytes, bytes]:
    """Read ``tls.crt``/``tls.key`` from ``cert_path`` or generate a self-signed pair."""
    if not cert_path:
        return self_signed()
    folder = Path(cert_path)
    try:
        return (folder / "tls.crt").read_bytes(), (folder / "tls.key").read_bytes()
    except OSError as exc:
        raise KvgateError(f"--cert-path {cert_path}: cannot read tls.crt/tls.key: {exc}") from exc
