"""Certificates and kubeconfigs for a stand-in control plane, as kubeadm would lay them out.

One CA signs the API server's serving certificate and every client certificate; identities are
the ones a kubeadm cluster uses (`kubernetes-admin` in `system:masters`, the controller manager's
`system:kube-controller-manager`), so RBAC decisions are the real ones. ECDSA P-256 keeps key
generation instant, so every control plane gets fresh material.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADMIN_USER = "kubernetes-admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
# The harness's own identity (node registration, the kubelet stand-in, audit barriers), kept
# apart from the admin so that audit queries can tell the code under test from the harness.
HARNESS_USER = "laconic-helm:harness"
SERVICE_CLUSTER_IP = "10.96.0.1"

_VALIDITY = datetime.timedelta(days=365)


def _pem_key(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


@dataclass(frozen=True)
class KeyPair:
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class Authority:
    """A CA that issues the serving and client certificates of one control plane."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes  # EC here; a real kind cluster's CA key is RSA

    @classmethod
    def create(cls, common_name: str = "kubernetes") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def pem(self) -> bytes:
        return _pem_cert(self.cert)

    def issue(
        self,
        common_name: str,
        *,
        organization: str | None = None,
        server_names: tuple[str, ...] = (),
    ) -> KeyPair:
        """A leaf certificate: a server certificate when `server_names` is given, else a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for entry in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
                except ValueError:
                    sans.append(x509.DNSName(entry))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return KeyPair(_pem_cert(cert), _pem_key(key))


def apiserver_names(*extra: str) -> tuple[str, ...]:
    """The names kubeadm puts on the API server certificate, plus `extra` (node name, IPs)."""
    return (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        SERVICE_CLUSTER_IP,
        *extra,
    )


def write_pki(directory: Path, *server_names: str) -> dict[str, Path]:
    """Writes a whole control plane's PKI under `directory`; returns the files by role."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = Authority.create()
    serving = ca.issue("kube-apiserver", server_names=apiserver_names(*server_names))
    sa_key = ec.generate_private_key(ec.SECP256R1())
    contents = {
        "ca.crt": ca.pem,
        "ca.key": _pem_key(ca.key),
        "apiserver.crt": serving.cert,
        "apiserver.key": serving.key,
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    files = {}
    for name, data in contents.items():
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600 if name.endswith(".key") else 0o644)
        files[name] = path
    return files


def load_authority(cert_pem: bytes, key_pem: bytes) -> Authority:
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError("a CA key must be EC or RSA")
    return Authority(cert, key)


def kubeconfig(name: str, server: str, ca_pem: bytes, client: KeyPair) -> str:
    """A self-contained kubeconfig (data inline) whose cluster, user and context are `name`."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    return yaml.safe_dump(doc, sort_keys=False)
