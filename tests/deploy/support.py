"""Helpers of the deployment tests: the repository's paths, sample secret files, and running
`python -m sqlward.gateway check-config` with exactly the environment a container would have.

Sample secrets are real where the gateway parses them at check-config (the audit signing key:
an Ed25519 PEM private key) and real anyway where it would at start-up (a self-signed TLS
certificate and key); passwords and tokens are random text.
"""

from __future__ import annotations

import datetime
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
K8S = ROOT / "deploy" / "k8s"
OTEL = ROOT / "deploy" / "otel"

# What a process needs from the outer environment to start at all; nothing else leaks into the
# config's ${VAR} expansion.
_PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def signing_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed(name: str = "sqlward") -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a self-signed P-256 certificate for `name`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def sample_secret(key: str) -> bytes:
    """Sample content for a Secret key, by what the key holds."""
    if key.endswith("signing-key.pem"):
        return signing_key_pem()
    if key in ("tls.crt", "ca.crt"):
        return self_signed()[0]
    if key == "tls.key":
        return self_signed()[1]
    return (secrets.token_urlsafe(24) + "\n").encode()


def check_config(config: Path, env: dict[str, str], python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    """`python -m sqlward.gateway check-config CONFIG` with `env` as the config's variables."""
    full = {k: os.environ[k] for k in _PASS_THROUGH if k in os.environ} | env
    return subprocess.run(
        [python, "-m", "sqlward.gateway", "check-config", str(config)],
        env=full, capture_output=True, text=True, timeout=60,
    )
