"""The container image's entrypoint: one image, a role per container.

    planner [ARGS]    mitosis-planner ARGS
    executor [ARGS]   mitosis-executor ARGS
    gateway [ARGS]    render Envoy's configuration (python -m mitosis.gateway ARGS), then
                      exec Envoy on it
    health [HOST:PORT [SERVICE]]
                      exit 0 when grpc.health.v1 answers SERVING (default 127.0.0.1:50051,
                      service "", the process itself); for HEALTHCHECK
    anything else     run as given (mitosis, sh, ...)

Each role replaces this process (exec), so the service gets SIGTERM itself.
"""

from __future__ import annotations

import os
import shutil
import sys

ROLES = {"planner": "mitosis-planner", "executor": "mitosis-executor"}
GATEWAY_CONFIG = "/tmp/envoy.yaml"


def gateway(args: list[str]) -> None:
    """Render Envoy's configuration from the template, then become Envoy."""
    from mitosis.gateway import envoy_binary
    from mitosis.gateway import main as render

    config = os.environ.get("MITOSIS_GATEWAY_CONFIG", GATEWAY_CONFIG)
    status = render([*args, "--out", config])
    if status != 0:
        sys.exit(status)
    envoy = envoy_binary()
    command = [envoy, "-c", config, "--disable-hot-restart"]
    command += ["--log-level", os.environ.get("ENVOY_LOG_LEVEL", "warn")]
    if os.environ.get("ENVOY_CONCURRENCY"):
        command += ["--concurrency", os.environ["ENVOY_CONCURRENCY"]]
    os.execv(envoy, command)


def health(args: list[str]) -> None:
    """Exit 0 if the service at HOST:PORT reports SERVING for SERVICE, 1 otherwise."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = args[0] if args else "127.0.0.1:50051"
    service = args[1] if len(args) > 1 else ""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3
            )
        except grpc.RpcError as error:
            print(f"health {target}: {error.code().name}", file=sys.stderr)
            sys.exit(1)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"health {target} {service or '(server)'}: {status}")
    sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)


def main(argv: list[str]) -> None:
    if not argv:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    role, args = argv[0], argv[1:]
    if role in ROLES:
        program = shutil.which(ROLES[role]) or ROLES[role]
        os.execv(program, [program, *args])
    elif role == "gateway":
        gateway(args)
    elif role == "health":
        health(args)
    else:
        os.execvp(role, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
