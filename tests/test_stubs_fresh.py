"""The checked-in generated code matches what the .proto files generate now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "services" / "mitosis" / "v1"
WEB_GENERATED = ROOT / "clients" / "web" / "src" / "gen"
PROTOC_GEN_ES = ROOT / "clients" / "web" / "node_modules" / ".bin" / "protoc-gen-es"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _stale(fresh: dict[str, bytes], checked_in: dict[str, bytes]) -> list[str]:
    names = fresh.keys() | checked_in.keys()
    return sorted(name for name in names if fresh.get(name) != checked_in.get(name))


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gen_protos.py"),
            "--only=python",
            f"--out={tmp_path}",
        ],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "mitosis" / "v1").iterdir()}
    checked_in = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.is_file()}

    stale = _stale(fresh, checked_in)
    assert not stale, f"run `make proto`: these generated files differ from proto/: {stale}"


@pytest.mark.skipif(
    not PROTOC_GEN_ES.exists(), reason="clients/web/node_modules is not installed (make web-deps)"
)
def test_generated_typescript_is_not_stale(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gen_protos.py"),
            "--only=web",
            f"--web-out={tmp_path}",
        ],
        check=True,
        capture_output=True,
    )
    stale = _stale(_files(tmp_path), _files(WEB_GENERATED))
    assert not stale, f"run `make proto`: these generated TypeScript files differ: {stale}"
