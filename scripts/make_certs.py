"""Make a private test CA and one server certificate it signs, for TLS with `make run`.

    .venv/bin/python scripts/make_certs.py build/tls

writes build/tls/ca.pem (the CA's certificate: what clients trust), build/tls/server.crt and
build/tls/server.key (for localhost, 127.0.0.1 and ::1, plus any --name), and prints the
variables that make `make run` serve TLS from end to end with them. The CA's own key is never
written: to issue more certificates, run it again (all files anew). For tests and trials only;
a deployment uses certificates from its own CA. Needs the `cryptography` package (`make setup`
installs it). tests/certs.py makes its throwaway CAs with the same code.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
"""What a server certificate names unless told otherwise: this machine, every way it is called."""


@dataclass(frozen=True)
class Issued:
    """PEM files of one certificate and its key."""

    cert: Path
    key: Path


class Authority:
    """A CA made now, in memory, writing its certificate and the ones it signs as PEM files."""

    def __init__(
        self, folder: Path, name: str = "Mitosis test CA", *, days: int = 1, file: str = ""
    ) -> None:
        """Make the CA; its certificate is FILE.pem, FILE being `file` or a slug of `name`."""
        self.folder = folder
        self.days = days
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._cert = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .sign(self._key, hashes.SHA256())
        )
        self.cert = folder / f"{file or _slug(name)}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, *, server: bool, names: Sequence[str] = LOCAL_NAMES, file: str = ""
    ) -> Issued:
        """Sign a certificate for `name`: a server's for `names` (DNS names or IPs), or a client's.

        The files are FILE.crt and FILE.key, FILE being `file` or a slug of `name`.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = self._builder(subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = file or _slug(name)
        issued = Issued(self.folder / f"{stem}.crt", self.folder / f"{stem}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.unlink(missing_ok=True)  # a new file, made private before the key is in it
        issued.key.touch(mode=0o600)
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=self.days))
        )


def spki_sha256(cert: Path) -> str:
    """Base64 SHA-256 of a certificate's public key: what Chromium's
    --ignore-certificate-errors-spki-list (and HPKP-style pins) name a certificate by."""
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    spki = loaded.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode()


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def main(argv: Sequence[str] | None = None) -> int:
    """Write the CA and the server certificate; print the variables to use them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the files (made if missing)")
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address the server certificate names; repeat for several",
    )
    parser.add_argument(
        "--days", type=int, default=30, help="days the certificates are valid (default %(default)s)"
    )
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    authority = Authority(folder, days=args.days, file="ca")
    ca = authority.cert
    server = authority.issue(
        "Mitosis server", server=True, names=[*LOCAL_NAMES, *args.name], file="server"
    )
    print(f"wrote {ca}, {server.cert} and {server.key}; for `make run` with TLS:", file=sys.stderr)
    print(
        f"export MITOSIS_TLS_CERT={shlex.quote(str(server.cert))}"
        f" MITOSIS_TLS_KEY={shlex.quote(str(server.key))} MITOSIS_TLS_CA={shlex.quote(str(ca))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
