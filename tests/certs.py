"""A throwaway certificate authority for TLS tests: scripts/make_certs.py's, one per test."""

from __future__ import annotations

from pathlib import Path

from scripts.make_certs import Authority, Issued, spki_sha256

__all__ = ["Issued", "TestAuthority", "spki_sha256"]


class TestAuthority(Authority):
    """A CA made for one test, writing PEM files into a folder; valid for a day."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path, name: str = "Mitosis test CA") -> None:
        super().__init__(folder, name, days=1)
