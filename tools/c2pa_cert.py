"""Make a development certificate chain for C2PA signing: a CA and, signed by it, an
end-entity certificate with the extensions C2PA validators require (ES256, P-256):

    python -m tools.c2pa_cert OUT_DIR [--name "My unCLIP server"] [--days 365]

writes OUT_DIR/ca.pem (the trust anchor a reader is given), OUT_DIR/chain.pem (end-entity
then CA: UNCLIP_C2PA_CERT) and OUT_DIR/key.pem (the end-entity's private key,
UNCLIP_C2PA_KEY). Such a chain is trusted by nobody else: readers report its manifests
valid but untrusted until they are given ca.pem. For production use a certificate from
a CA on the C2PA trust list (docs/trust.md).

The end-entity certificate carries what C2PA requires of a signer: X.509 v3, not a CA
(basicConstraints cA false), keyUsage digitalSignature (critical), an extendedKeyUsage of
emailProtection and documentSigning (never anyExtendedKeyUsage), subject and authority
key identifiers, and it is not self-signed.
"""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")  # id-kp-documentSigning (RFC 9336)


@dataclass(frozen=True)
class Chain:
    """PEM texts: the CA certificate, the chain (end-entity then CA) and the end-entity's key."""

    ca: bytes
    chain: bytes
    key: bytes


def _name(common: str, unit: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "unclip-server")])


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, days: int, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(_key_usage(ca), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if not ca:
        usages = [ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_chain(name: str = "unclip-server development signer", days: int = 365) -> Chain:
    """A fresh CA and an end-entity certificate it signed, valid `days` days from now."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{name} CA", "certificate authority")
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, days, ca=True)
    leaf = _certificate(_name(name, "content credentials"), key, ca_name, ca_key, days, ca=False)
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return Chain(ca.public_bytes(pem), leaf.public_bytes(pem) + ca.public_bytes(pem), key_pem)


def write_chain(out_dir: Path, chain: Chain) -> dict[str, Path]:
    """Write ca.pem, chain.pem and key.pem (mode 600) into out_dir; their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"ca": out_dir / "ca.pem", "chain": out_dir / "chain.pem", "key": out_dir / "key.pem"}
    paths["ca"].write_bytes(chain.ca)
    paths["chain"].write_bytes(chain.chain)
    paths["key"].touch(mode=0o600)
    paths["key"].write_bytes(chain.key)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.c2pa_cert", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", default="unclip-server development signer", help="the signer's common name")
    parser.add_argument("--days", type=int, default=365, help="validity in days")
    args = parser.parse_args(argv)
    paths = write_chain(args.out_dir, make_chain(args.name, args.days))
    print(f"UNCLIP_C2PA_CERT={paths['chain']}\nUNCLIP_C2PA_KEY={paths['key']}\ntrust anchor: {paths['ca']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
