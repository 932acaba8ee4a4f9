"""Throw-away X.509 material for simulators that speak TLS on loopback.

``CertificateAuthority`` makes a CA at construction and issues server
certificates for loopback names; its PEM file is what a client passes as its
CA bundle (``tls.ca_bundle``, httpx's ``verify=``, msal's ``verify=``).
``client_certificate`` makes a self-signed certificate and key of the kind an
Entra app registration accepts as a credential.

Keys are RSA 2048 (what Entra requires for certificate credentials, and fast
enough to generate per test). Nothing here is fit for anything but tests.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "KeyPair", "LoopbackTls", "ServeTls", "client_certificate"]

_VALIDITY = dt.timedelta(days=2)
# Certificates start a little in the past so a client whose clock lags
# by a few minutes still accepts them.
_BACKDATE = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def sha1_thumbprint(self) -> str:
        """Upper-case hex SHA-1 of the DER certificate, as the Entra portal shows it."""
        return self.certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303

    @property
    def x5t(self) -> str:
        """The JWS ``x5t`` header value: base64url SHA-1 of the DER certificate."""
        return _b64url(self.certificate.fingerprint(hashes.SHA1()))  # noqa: S303

    @property
    def x5t_s256(self) -> str:
        """The JWS ``x5t#S256`` header value: base64url SHA-256 of the DER certificate."""
        return _b64url(self.certificate.fingerprint(hashes.SHA256()))

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.crt`` and ``stem.key`` (mode 0600) into ``directory``."""
        cert = directory / f"{stem}.crt"
        key = directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        return cert, key


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """A CA made at construction, valid for two days."""

    def __init__(self, name: str = "presence-sync simulator CA") -> None:
        self._key = _key()
        subject = _name(name)
        now = _now()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM: what clients trust."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, path: Path) -> Path:
        """Write the CA certificate to ``path`` and return it."""
        path.write_bytes(self.cert_pem)
        return path

    def issue(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")) -> KeyPair:
        """A server certificate for ``hosts`` (IP addresses or DNS names)."""
        key = _key()
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def client_certificate(common_name: str = "presence-sync") -> KeyPair:
    """A self-signed certificate and key, as an admin would upload to an
    Entra app registration for certificate credentials."""
    key = _key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


class ServeTls(TypedDict):
    """uvicorn's TLS options, as ``sim.serve`` passes them through."""

    ssl_certfile: str
    ssl_keyfile: str


@dataclass(frozen=True)
class LoopbackTls:
    """Files for serving a simulator over HTTPS on loopback: a fresh CA
    (``ca_file``, what a client trusts, as an admin points ``tls.ca_bundle``
    at a company CA) and a server certificate and key it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(
        cls,
        directory: Path,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1"),
        *,
        stem: str = "server",
        ca_name: str = "presence-sync simulator CA",
    ) -> LoopbackTls:
        """Make a CA and a certificate for ``hosts`` and write them into
        ``directory`` (``<stem>-ca.pem``, ``<stem>.pem``, ``<stem>.key``)."""
        directory.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority(ca_name)
        cert, key = ca.issue(hosts).write(directory, stem)
        return cls(ca.write_ca(directory / f"{stem}-ca.pem"), cert, key)

    def serve_options(self) -> ServeTls:
        """Keyword arguments for ``sim.serve.serve``/``serve_in_thread``."""
        return {"ssl_certfile": str(self.cert_file), "ssl_keyfile": str(self.key_file)}
