"""Generate code from proto/: Python code and mypy stubs (services/ by default), and the
browser UI's TypeScript (clients/web/src/gen by default, with @bufbuild/protoc-gen-es run
as a plugin of the protoc that grpcio-tools ships)."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
BIN = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside the interpreter
WEB = ROOT / "clients" / "web"
PROTOC_GEN_ES = WEB / "node_modules" / ".bin" / "protoc-gen-es"


def proto_files() -> list[Path]:
    """Return every .proto file of the project, sorted, relative to proto/."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def _protoc(*options: str) -> None:
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        *options,
        *(str(p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generate(out_dir: Path) -> None:
    """Write *_pb2.py, *_pb2_grpc.py and their .pyi stubs for every .proto under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _protoc(
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
    )
    for package in {p.parent for p in proto_files()}:
        (out_dir / package / "__init__.py").touch()


def generate_web(out_dir: Path) -> None:
    """Write the TypeScript *_pb.ts files (messages and service descriptors) under out_dir."""
    if not PROTOC_GEN_ES.exists():
        raise SystemExit(f"{PROTOC_GEN_ES} is missing: run `make web-deps` (npm ci in {WEB})")
    out_dir.mkdir(parents=True, exist_ok=True)
    _protoc(
        f"--plugin=protoc-gen-es={PROTOC_GEN_ES}",
        f"--es_out={out_dir}",
        "--es_opt=target=ts",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "services", help="Python output root")
    parser.add_argument(
        "--web-out", type=Path, default=WEB / "src" / "gen", help="TypeScript output root"
    )
    parser.add_argument(
        "--only", choices=["python", "web"], help="generate one language only (default: both)"
    )
    args = parser.parse_args()
    if args.only in (None, "python"):
        generate(args.out)
    if args.only in (None, "web"):
        generate_web(args.web_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
