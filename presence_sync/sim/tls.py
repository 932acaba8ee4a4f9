"""A throw-away certificate authority for simulators served over HTTPS.

``LoopbackTls.create(directory)`` writes a CA certificate (``ca.pem``) and a
server certificate with its key (``server.pem``, ``server.key``) valid for
``localhost``, ``127.0.0.1`` and ``::1``. Serve with ``**tls.serve_options()``
(see ``sim.serve``) and trust ``tls.ca_file`` in the client, exactly as an
admin points ``tls.ca_bundle`` at a company CA. Nothing here is secret or
lasting: keys are made fresh each time and live for a day.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LoopbackTls"]

_LIFETIME = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "presence-sync simulators"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class LoopbackTls:
    """Paths of a generated CA and of the loopback server certificate it signed."""

    ca_file: Path
    """The CA certificate (PEM): what a client trusts."""
    cert_file: Path
    """The server certificate (PEM)."""
    key_file: Path
    """The server's private key (PEM, unencrypted)."""

    @classmethod
    def create(cls, directory: Path) -> LoopbackTls:
        """Generate a CA and a server certificate for loopback into ``directory``."""
        now = datetime.datetime.now(datetime.UTC)
        # Backdated a little: the client's clock may trail ours by a moment.
        start, end = now - datetime.timedelta(minutes=5), now + _LIFETIME

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("presence-sync simulator CA")
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        server = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )

        directory.mkdir(parents=True, exist_ok=True)
        tls = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        tls.ca_file.write_bytes(_pem(ca))
        tls.cert_file.write_bytes(_pem(server))
        tls.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        tls.key_file.chmod(0o600)
        return tls

    def serve_options(self) -> dict[str, str]:
        """Keyword arguments for ``sim.serve.serve``/``serve_in_thread``."""
        return {"ssl_certfile": str(self.cert_file), "ssl_keyfile": str(self.key_file)}
