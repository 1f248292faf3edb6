"""The checked-in generated code matches what the .proto files generate now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "services" / "mitosis" / "v1"


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), f"--out={tmp_path}"],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "mitosis" / "v1").iterdir()}
    checked_in = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.is_file()}

    stale = sorted(
        name for name in fresh.keys() | checked_in.keys() if fresh.get(name) != checked_in.get(name)
    )
    assert not stale, f"run `make proto`: these generated files differ from proto/: {stale}"
