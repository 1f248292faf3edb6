"""Generate code from proto/: Python code and mypy stubs (services/ by default), the
descriptor set Envoy's gRPC-JSON transcoder reads (beside the Python code), and the
browser UI's TypeScript (clients/web/src/gen by default, with @bufbuild/protoc-gen-es run
as a plugin of the protoc that grpcio-tools ships). `--lint` runs buf's lint rules (buf.yaml)
through the same protoc, which finds google/api/*.proto where buf alone cannot."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import google.api.annotations_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
BIN = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside the interpreter
WEB = ROOT / "clients" / "web"
PROTOC_GEN_ES = WEB / "node_modules" / ".bin" / "protoc-gen-es"
BUF = ROOT / "node_modules" / ".bin" / "buf"
PROTOC_GEN_BUF_LINT = ROOT / "node_modules" / ".bin" / "protoc-gen-buf-lint"
# google/api/annotations.proto and http.proto (the google.api.http rules) as the
# googleapis-common-protos wheel installs them: imported, never copied into proto/.
GOOGLEAPIS = Path(google.api.annotations_pb2.__file__).resolve().parents[2]
HTTP_RULE_PROTOS = ("google/api/annotations.proto", "google/api/http.proto")
ERROR_DETAIL_PROTOS = ("google/rpc/error_details.proto",)
DESCRIPTOR_SET = "descriptor_set.binpb"
"""The FileDescriptorSet of every .proto with its imports, written beside the Python code
(mitosis/v1/) so that the wheel and the image carry it; the gateway points Envoy at it."""


def proto_files() -> list[Path]:
    """Return every .proto file of the project, sorted, relative to proto/."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def _protoc(*options: str, also: Sequence[str] = ()) -> None:
    """Run protoc over the project's .proto files, and the `also` ones (imports to generate)."""
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{GOOGLEAPIS}",
        f"-I{well_known}",
        *options,
        *(str(p) for p in proto_files()),
        *also,
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
    _protoc(
        f"--descriptor_set_out={out_dir / 'mitosis' / 'v1' / DESCRIPTOR_SET}",
        "--include_imports",
        # Errors carry a google.rpc.ErrorInfo: without its type Envoy cannot write the
        # error's JSON body and sends none.
        also=ERROR_DETAIL_PROTOS,
    )


def generate_web(out_dir: Path) -> None:
    """Write the TypeScript *_pb.ts files (messages and service descriptors) under out_dir."""
    if not PROTOC_GEN_ES.exists():
        raise SystemExit(f"{PROTOC_GEN_ES} is missing: run `make web-deps` (npm ci in {WEB})")
    out_dir.mkdir(parents=True, exist_ok=True)
    _protoc(
        f"--plugin=protoc-gen-es={PROTOC_GEN_ES}",
        f"--es_out={out_dir}",
        "--es_opt=target=ts",
        # The generated files import the options' files, so they are generated too.
        also=HTTP_RULE_PROTOS,
    )


def lint() -> None:
    """Check the .proto files with the lint rules buf.yaml configures.

    `buf lint` alone cannot: it does not find google/api/*.proto, which protoc finds in the
    googleapis-common-protos wheel. So buf lists the rules buf.yaml turns on, and runs them
    as a protoc plugin (protoc-gen-buf-lint) on the project's files, imports resolved.
    """
    for tool in (BUF, PROTOC_GEN_BUF_LINT):
        if not tool.exists():
            raise SystemExit(f"{tool} is missing: run `npm ci` at the root")
    listed = subprocess.run(
        [str(BUF), "config", "ls-lint-rules", "--configured-only", "--format", "json"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rules = [json.loads(line)["id"] for line in listed.splitlines() if line.strip()]
    config = {"input_config": {"version": "v2", "lint": {"use": rules}}}
    _protoc(
        f"--plugin=protoc-gen-buf-lint={PROTOC_GEN_BUF_LINT}",
        f"--buf-lint_out={ROOT}",
        f"--buf-lint_opt={json.dumps(config)}",
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
    parser.add_argument(
        "--lint", action="store_true", help="generate nothing: check the protos with buf lint"
    )
    args = parser.parse_args()
    if args.lint:
        lint()
        return 0
    if args.only in (None, "python"):
        generate(args.out)
    if args.only in (None, "web"):
        generate_web(args.web_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
