"""TLS for the services, from PEM files: server certificates, mTLS, and client channels."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import grpc

from mitosis.rpc.settings import add_setting


class TlsConfigError(ValueError):
    """The TLS files given cannot be used together; the message says why."""


def add_tls_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Add --tls-cert, --tls-key and --tls-client-ca (env MITOSIS_TLS_CERT and so on)."""
    add_setting(
        parser,
        "--tls-cert",
        "MITOSIS_TLS_CERT",
        env,
        type=Path,
        default_text="none: plain text",
        help="serve TLS with this PEM certificate chain (needs --tls-key)",
    )
    add_setting(
        parser,
        "--tls-key",
        "MITOSIS_TLS_KEY",
        env,
        type=Path,
        help="the PEM private key of --tls-cert",
    )
    add_setting(
        parser,
        "--tls-client-ca",
        "MITOSIS_TLS_CLIENT_CA",
        env,
        type=Path,
        help="require client certificates signed by this PEM CA: mutual TLS",
    )


def server_credentials(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    """Return the server's TLS credentials from its flags, or None for plaintext."""
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise TlsConfigError("--tls-cert and --tls-key go together")
    client_ca = _read(args.tls_client_ca) if args.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(args.tls_key), _read(args.tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials | None:
    """Return credentials for a TLS channel trusting `ca` (mTLS with cert and key), or None."""
    if ca is None:
        if cert is not None or key is not None:
            raise TlsConfigError("a client certificate needs a CA to check the server with")
        return None
    if (cert is None) != (key is None):
        raise TlsConfigError("a client certificate and its key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca),
        private_key=_read(key) if key else None,
        certificate_chain=_read(cert) if cert else None,
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsConfigError(f"cannot read {path}: {error.strerror}") from error
